"""Losses: LSD-C's pairwise BCE, MSE consistency and ramp-up; SimCLR's NT-Xent and MoCo's InfoNCE.

Pure, device-agnostic tensor functions; inputs are cast to fp32.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-7


def pairwise_bce(p_bar: torch.Tensor, p: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Pairwise binary cross-entropy, averaged over all B^2 pairs (diagonal included).

    p_bar: B x C probabilities of the mixed view; p: B x C of the clean view; target: B x B
    in [0, 1]. P_ij = p_bar_i . p_j (clamped to [0, 1] against rounding), and the loss is
    -mean[T log(P + eps) + (1 - T) log(1 - P + eps)]. Returns a scalar.
    """
    prob = (p_bar.float() @ p.float().T).clamp(0.0, 1.0)
    t = target.float()
    return -(t * torch.log(prob + eps) + (1.0 - t) * torch.log(1.0 - prob + eps)).mean()


def mse_consistency(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Mean squared error between two B x C probability tensors (mean over B x C)."""
    return F.mse_loss(p1.float(), p2.float())


def sigmoid_rampup(epoch: float, length: int) -> float:
    """exp(-5 (1 - min(e, T)/T)^2) for epoch e counted from 0; 1.0 when T = 0."""
    if length == 0:
        return 1.0
    phase = 1.0 - min(max(float(epoch), 0.0), float(length)) / length
    return float(math.exp(-5.0 * phase * phase))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent.  z1, z2: N x D projections of two views of the same N images.

    Each of the 2N samples is classified against the other 2N - 1 by cosine similarity /
    temperature, its positive being the other view of its image. Mean over 2N. Scalar.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE.  q: N x D queries; k: N x D keys (positives); queue: K x D negatives.

    Vectors are L2-normalised; logits [q.k, q.queue] / temperature with the positive at
    index 0; cross-entropy, mean over N. Scalar.
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    neg = F.normalize(queue.float(), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ neg.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
