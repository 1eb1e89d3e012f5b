"""Each labeler against a slow, obviously-correct reference (method.md, step 2)."""
import math

import pytest
import torch

from lsdc import labelers


def feats(b=23, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g)


def ref_cosine(f, tau):
    b = len(f)
    out = torch.zeros(b, b)
    for i in range(b):
        for j in range(b):
            c = float(f[i] @ f[j]) / (float(f[i].norm()) * float(f[j].norm()))
            out[i, j] = 1.0 if c >= tau else 0.0
    return out


def ref_sne(f, tau, t):
    b = len(f)
    d = [[-sum(float(f[i, k] - f[j, k]) ** 2 for k in range(f.shape[1])) / t ** 2 - (1000.0 if i == j else 0.0)
          for j in range(b)] for i in range(b)]
    row = [[math.exp(d[i][j]) / sum(math.exp(d[i][m]) for m in range(b)) for j in range(b)] for i in range(b)]
    col = [[math.exp(d[i][j]) / sum(math.exp(d[m][j]) for m in range(b)) for j in range(b)] for i in range(b)]
    return torch.tensor([[1.0 if 0.5 * row[i][j] + 0.5 * col[i][j] + (i == j) > tau else 0.0
                          for j in range(b)] for i in range(b)])


def ref_knn(f, k):
    b = len(f)
    d = [[sum(float(f[i, m] - f[j, m]) ** 2 for m in range(f.shape[1])) for j in range(b)] for i in range(b)]
    row_k = [sorted(d[i])[k - 1] for i in range(b)]
    col_k = [sorted(d[m][j] for m in range(b))[k - 1] for j in range(b)]
    return torch.tensor([[1.0 if d[i][j] < row_k[i] or d[i][j] < col_k[j] else 0.0 for j in range(b)]
                         for i in range(b)])


@pytest.mark.parametrize("tau", [-0.2, 0.0, 0.3, 0.9])
def test_cosine_matches_reference(tau):
    f = feats()
    assert torch.equal(labelers.cosine(f, tau), ref_cosine(f, tau))


@pytest.mark.parametrize("tau,t", [(0.01, 1.0), (0.01, 0.5), (0.1, 2.0), (0.3, 1.5)])
def test_sne_matches_reference(tau, t):
    f = feats(seed=1)
    s = labelers.sne(f, tau, t)
    assert torch.equal(s, ref_sne(f, tau, t))
    assert torch.all(s.diagonal() == 1)


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_knn_matches_reference(k):
    f = feats(seed=2)
    assert torch.equal(labelers.knn(f, k), ref_knn(f, k))


def test_knn_keeps_k_minus_one_per_row_including_self():
    f = feats(b=30, d=8, seed=3)
    k = 6
    d = torch.cdist(f, f) ** 2
    row_rule = (d < torch.kthvalue(d, k, dim=1, keepdim=True).values).float()
    assert torch.all(row_rule.sum(1) == k - 1)
    s = labelers.knn(f, k)
    assert torch.all(s.diagonal() == 1)          # self has distance 0
    assert torch.all(s >= row_rule)              # the union keeps every row neighbour
    assert torch.equal(s, s.T)                   # row-rule OR column-rule is symmetric for symmetric d


def test_labelers_return_binary_float_on_input_device_and_ignore_grad():
    f = feats().requires_grad_(True)
    for s in (labelers.cosine(f, 0.5), labelers.sne(f, 0.01, 1.0), labelers.knn(f, 3)):
        assert s.dtype == torch.float32 and s.shape == (23, 23)
        assert set(s.unique().tolist()) <= {0.0, 1.0}


def test_registry_names():
    from lsdc.registry import LABELERS
    assert {"cosine", "sne", "knn"} <= set(LABELERS.names())
