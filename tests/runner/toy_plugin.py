"""A user's plugin module: registers a labeler. Used by the normal-exit test in tests/runner/test_faults.py."""
import torch

from lsdc.registry import LABELERS, Param


@LABELERS.register("toy_dot", label="toy dot",
                   params=[Param("toy_dot_threshold", float, lo=-1.0, hi=1.0, arg="threshold")],
                   presets={"digits": {"toy_dot_threshold": 0.8}})
def toy_dot(feats: torch.Tensor, threshold: float) -> torch.Tensor:
    f = torch.nn.functional.normalize(feats.float(), dim=1)
    return (f @ f.T > threshold).float()
