"""Mixing of the two augmented views with pairwise targets: RICAP, MixUp, none (method.md).

A mixing function takes the two augmented views x_bar, x_bar2 (B x C x H x W, or B x D for
MixUp on vectors) and a numpy ``Generator`` for its random draws, and returns the two mixed
views and a :class:`MixPlan`. :func:`mix_target` turns the pair labels S (B x B, rows: the
mixed view's index i, columns: the clean view's index j) into the mixed target T.
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import torch

from .registry import MIXINGS as REGISTRY, Param

MIX_BETA = Param("mix_beta", float, lo=0.0, lo_open=True, default=0.3, arg="beta", help="Beta(beta, beta) of the mixing draws")
RICAP_TARGET = Param("ricap_target", str, choices=("reference", "corrected"), default="reference", arg="target",
                     help="reference: the authors' code (permutes the clean index); corrected: the mosaic's content")


@dataclass
class MixPlan:
    """What a mixing did to the batch: K components, weights summing to 1, and for each
    the permutation of the batch it drew its content from (None: the identity)."""
    kind: str
    weights: list[float]
    perms: list[torch.Tensor | None]
    target: str = "reference"       # RICAP's target rule (see mix_target)


def _perm(b: int, rng: np.random.Generator, device) -> torch.Tensor:
    return torch.from_numpy(rng.permutation(b)).to(device, non_blocking=True)


@REGISTRY.register("ricap", label="RICAP", params=[RICAP_TARGET, MIX_BETA], needs_images=True)
def ricap(x_bar: torch.Tensor, x_bar2: torch.Tensor, rng: np.random.Generator, beta: float = 0.3,
          target: str = "reference"):
    """RICAP with the reference code's semantics.

    Once per batch: w = round(H * Beta(beta, beta)) (the size along dim 2) and
    h = round(W * Beta(beta, beta)) (along dim 3); patch sizes (w, h), (H-w, h), (w, W-h),
    (H-w, W-h) tile the mosaic as [[0, 2], [1, 3]] in (dim 2, dim 3) order, with area weights
    W_k. Patch k of every mosaic is cut at one random offset from image pi_k(m), pi_k being
    the identity if the patch covers more than a quarter of the image, else a random
    permutation. x_bar2 uses the same sizes and permutations with its own offsets.
    """
    b, _, hh, ww = x_bar.shape
    w = int(np.round(hh * rng.beta(beta, beta)))
    h = int(np.round(ww * rng.beta(beta, beta)))
    sizes = [(w, h), (hh - w, h), (w, ww - h), (hh - w, ww - h)]
    starts = [(0, 0), (w, 0), (0, h), (w, h)]
    out1, out2 = torch.empty_like(x_bar), torch.empty_like(x_bar2)
    weights, perms = [], []
    for (sw, sh), (r0, c0) in zip(sizes, starts):
        o1 = (int(rng.integers(0, hh - sw + 1)), int(rng.integers(0, ww - sh + 1)))
        o2 = (int(rng.integers(0, hh - sw + 1)), int(rng.integers(0, ww - sh + 1)))
        perm = None if sw * sh > (hh * ww) / 4 else _perm(b, rng, x_bar.device)
        for src, dst, (a, c) in ((x_bar, out1, o1), (x_bar2, out2, o2)):
            patch = src[:, :, a:a + sw, c:c + sh]
            dst[:, :, r0:r0 + sw, c0:c0 + sh] = patch if perm is None else patch[perm]
        weights.append(sw * sh / (hh * ww))
        perms.append(perm)
    return out1, out2, MixPlan("ricap", weights, perms, target)


@REGISTRY.register("mixup", label="MixUp", params=[MIX_BETA], implies={"weight_decay": 1e-4})
def mixup(x_bar: torch.Tensor, x_bar2: torch.Tensor, rng: np.random.Generator, beta: float = 0.3):
    """MixUp: lam ~ Beta(beta, beta) and one permutation per batch, shared by both views:
    x <- lam x + (1 - lam) x[perm]. Works on images and vectors."""
    lam = float(rng.beta(beta, beta))
    perm = _perm(x_bar.shape[0], rng, x_bar.device)
    out1 = lam * x_bar + (1.0 - lam) * x_bar[perm]
    out2 = lam * x_bar2 + (1.0 - lam) * x_bar2[perm]
    return out1, out2, MixPlan("mixup", [lam, 1.0 - lam], [None, perm])


@REGISTRY.register("none", label="none")
def no_mix(x_bar: torch.Tensor, x_bar2: torch.Tensor, rng: np.random.Generator, beta: float = 0.3):
    return x_bar, x_bar2, MixPlan("none", [1.0], [None])




def mix_target(s: torch.Tensor, plan: MixPlan, ricap_target: str | None = None) -> torch.Tensor:
    """The mixed pairwise target T (B x B) for (mixed view i, clean view j).

    - RICAP ``reference`` (the authors' code): T_ij = sum_k W_k S[i, pi_k(j)], i.e. it
      permutes the clean index j;
    - RICAP ``corrected``: T_ij = sum_k W_k S[pi_k(i), j], the content of mosaic i;
    - MixUp: T = lam S + (1 - lam) S[perm, :] (along the mixed index);
    - none: T = S.
    """
    if plan.kind == "none":
        return s
    ricap_target = ricap_target or plan.target
    by_column = plan.kind == "ricap" and ricap_target == "reference"
    if plan.kind == "ricap" and ricap_target not in ("reference", "corrected"):
        raise ValueError(f"ricap_target: unknown {ricap_target!r}; allowed: reference, corrected")
    t = torch.zeros_like(s)
    for w, perm in zip(plan.weights, plan.perms):
        if w == 0.0:
            continue
        if perm is None:
            t = t + w * s
        else:
            t = t + w * (s[:, perm] if by_column else s[perm, :])
    return t


def from_config(cfg):
    """The mixing a :class:`~lsdc.config.TrialConfig` names, with its parameters bound:
    ``(x_bar, x_bar2, rng) -> (mixed, mixed2, MixPlan)``."""
    entry = REGISTRY.get(cfg.mixing)
    kwargs = {p.kwarg: cfg.param(p.name) for p in entry.params}
    return lambda a, b, rng: entry.fn(a, b, rng, **kwargs)
