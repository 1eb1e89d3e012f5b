"""Pairwise labelers: from a batch of features to 0/1 pair labels (method.md, step 2).

Each is a pure, device-agnostic function of a B x D feature tensor returning a B x B
float tensor of 0/1 (computed in fp32), with the reference code's exact rules.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def squared_distances(feats: torch.Tensor) -> torch.Tensor:
    """B x B squared Euclidean distances, exact zeros on the diagonal."""
    f = feats.float()
    d = torch.cdist(f, f, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    return d.fill_diagonal_(0.0)


def cosine(feats: torch.Tensor, tau: float) -> torch.Tensor:
    """S_ij = 1 if cos(f_i, f_j) >= tau.  feats: B x D; returns B x B."""
    f = F.normalize(feats.float(), dim=1)
    return (f @ f.T >= tau).float()


def sne(feats: torch.Tensor, tau: float, temperature: float) -> torch.Tensor:
    """SNE-style labels.  feats: B x D; returns B x B.

    D_ij = -||f_i - f_j||^2 / t^2, minus 1000 on the diagonal; Q = (rowsoftmax(D) +
    colsoftmax(D)) / 2 + I; S_ij = 1 if Q_ij > tau (the diagonal is always 1).
    """
    b = feats.shape[0]
    eye = torch.eye(b, device=feats.device)
    d = -squared_distances(feats) / (temperature ** 2) - 1000.0 * eye
    q = 0.5 * torch.softmax(d, dim=1) + 0.5 * torch.softmax(d, dim=0) + eye
    return (q > tau).float()


def knn(feats: torch.Tensor, k: int) -> torch.Tensor:
    """kNN labels.  feats: B x D; returns B x B.

    With squared distances d (self included, distance 0): S_ij = 1 if d_ij is strictly
    below the k-th smallest value of row i, or strictly below the k-th smallest value of
    column j. The strict inequality keeps k-1 entries per row, self included.
    """
    d = squared_distances(feats)
    row_k = torch.kthvalue(d, k, dim=1, keepdim=True).values
    col_k = torch.kthvalue(d, k, dim=0, keepdim=True).values
    return ((d < row_k) | (d < col_k)).float()


LABELERS: dict[str, Callable[..., torch.Tensor]] = {"cosine": cosine, "sne": sne, "knn": knn}


def from_config(cfg) -> Callable[[torch.Tensor], torch.Tensor]:
    """The labeler a :class:`~lsdc.config.TrialConfig` names, with its parameters bound."""
    from .config import LABELER_PARAMS
    if cfg.labeler not in LABELERS:
        raise ValueError(f"labeler: unknown {cfg.labeler!r}; allowed: {', '.join(LABELERS)}")
    fn = LABELERS[cfg.labeler]
    params = [getattr(cfg, name) for name in LABELER_PARAMS[cfg.labeler]]
    return lambda f: fn(f, *params)
