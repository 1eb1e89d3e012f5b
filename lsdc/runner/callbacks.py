"""Extra Ray Tune callbacks named on a study's command line: MLflow and Weights & Biases through
Ray's own integrations, or any ``MODULE:FACTORY`` returning a ``ray.tune.Callback``."""
from __future__ import annotations

import os
from typing import Sequence

from ..planning import StudyError


def make_callbacks(names: Sequence[str], experiment: str) -> list:
    """The Tune callbacks named on the command line (see :func:`check_callback_name`)."""
    import importlib
    out = []
    for name in names:
        if name == "mlflow":
            try:
                from ray.air.integrations.mlflow import MLflowLoggerCallback
                import mlflow  # noqa: F401
            except ImportError:
                raise StudyError("--callback mlflow: mlflow is not installed; pip install 'lsdc[mlflow]'") from None
            out.append(MLflowLoggerCallback(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
                                            experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", experiment),
                                            save_artifact=False))
        elif name == "wandb":
            try:
                from ray.air.integrations.wandb import WandbLoggerCallback
                import wandb  # noqa: F401
            except ImportError:
                raise StudyError("--callback wandb: wandb is not installed; pip install 'lsdc[wandb]'") from None
            out.append(WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", experiment)))
        else:
            mod, _, fn = name.partition(":")
            try:
                factory = getattr(importlib.import_module(mod), fn)
            except (ImportError, AttributeError) as e:
                raise StudyError(f"--callback {name}: {e}") from None
            out.append(factory())
    return out
