"""Pairwise labelers: from a batch of features to 0/1 pair labels (method.md, step 2).

Each is a pure, device-agnostic function of a B x D feature tensor returning a B x B
float tensor of 0/1 (computed in fp32), with the reference code's exact rules.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .registry import LABELERS as REGISTRY, Param


def squared_distances(feats: torch.Tensor) -> torch.Tensor:
    """B x B squared Euclidean distances, exact zeros on the diagonal."""
    f = feats.float()
    d = torch.cdist(f, f, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    return d.fill_diagonal_(0.0)


@REGISTRY.register(
    "cosine", label="cosine",
    params=[Param("cosine_tau", float, lo=-1.0, hi=1.0, arg="tau", search=("float", 0.5, 0.99, False),
                  help="cosine similarity threshold")],
    presets={"cifar10": {"cosine_tau": 0.9}, "cifar100-20": {"cosine_tau": 0.95}, "digits": {"cosine_tau": 0.9}})
def cosine(feats: torch.Tensor, tau: float) -> torch.Tensor:
    """S_ij = 1 if cos(f_i, f_j) >= tau.  feats: B x D; returns B x B."""
    f = F.normalize(feats.float(), dim=1)
    return (f @ f.T >= tau).float()


@REGISTRY.register(
    "sne", label="SNE",
    params=[Param("sne_tau", float, lo=0.0, hi=2.0, hi_open=True, arg="tau", search=("float", 1e-3, 0.2, True),
                  help="threshold on the symmetrised SNE probabilities"),
            Param("sne_temperature", float, lo=0.0, lo_open=True, arg="temperature",
                  search=("float", 0.1, 10.0, True), help="distance scale t of the SNE kernel")],
    presets={"cifar10": {"sne_tau": 0.01, "sne_temperature": 1.0},
             "cifar100-20": {"sne_tau": 0.01, "sne_temperature": 0.5},
             "stl10": {"sne_tau": 0.01, "sne_temperature": 0.5},
             "digits": {"sne_tau": 0.01, "sne_temperature": 3.0}})
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


def _knn_space(base: dict) -> tuple:
    return ("int", 3, max(3, min(50, int(base["batch_size"]) - 1)), False)


@REGISTRY.register(
    "knn", label="kNN",
    check=lambda c: f"knn_k: must be < batch_size ({c.batch_size}), got {c.knn_k}" if c.knn_k >= c.batch_size else None,
    params=[Param("knn_k", int, lo=1, arg="k", search=_knn_space, help="neighbours (self included), < batch size")],
    presets={"cifar10": {"knn_k": 20}, "cifar100-20": {"knn_k": 10}, "mnist": {"knn_k": 10},
             "reuters10k": {"knn_k": 5}, "digits": {"knn_k": 10}})
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


def from_config(cfg) -> Callable[[torch.Tensor], torch.Tensor]:
    """The labeler a :class:`~lsdc.config.TrialConfig` names, with its parameters bound."""
    entry = REGISTRY.get(cfg.labeler)
    kwargs = {p.kwarg: cfg.param(p.name) for p in entry.params}
    return lambda f: entry.fn(f, **kwargs)
