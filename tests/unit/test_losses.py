"""Losses against slow references; ramp-up values."""
import math

import pytest
import torch
import torch.nn.functional as F

from lsdc import losses


def probs(b, c, seed):
    g = torch.Generator().manual_seed(seed)
    return F.softmax(torch.randn(b, c, generator=g) * 2, dim=1)


def test_pairwise_bce_matches_double_loop():
    p_bar, p = probs(7, 4, 0), probs(7, 4, 1)
    t = torch.rand(7, 7, generator=torch.Generator().manual_seed(2))
    total = 0.0
    for i in range(7):
        for j in range(7):
            pij = float(sum(p_bar[i, c] * p[j, c] for c in range(4)))
            tij = float(t[i, j])
            total += -(tij * math.log(pij + 1e-7) + (1 - tij) * math.log(1 - pij + 1e-7))
    assert losses.pairwise_bce(p_bar, p, t).item() == pytest.approx(total / 49, rel=1e-5)


def test_pairwise_bce_orientation_mixed_rows_clean_columns():
    # P_ij = p_bar_i . p_j: row i of the target talks about mixed sample i
    p_bar = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    good = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert losses.pairwise_bce(p_bar, p, good).item() < 1e-6
    assert losses.pairwise_bce(p_bar, p, good.T).item() > 1.0


def test_pairwise_bce_has_gradients_and_is_finite_at_extremes():
    p_bar = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = losses.pairwise_bce(p_bar, p, torch.eye(2))
    loss.backward()
    assert torch.isfinite(loss) and p_bar.grad is not None


def test_mse_consistency_is_mean_over_b_times_c():
    a, b = probs(5, 3, 0), probs(5, 3, 1)
    assert losses.mse_consistency(a, b).item() == pytest.approx(float(((a - b) ** 2).sum() / 15), rel=1e-6)


@pytest.mark.parametrize("epoch,expected", [(0, math.exp(-5)), (50, math.exp(-5 * 0.25)), (100, 1.0),
                                            (150, 1.0), (-3, math.exp(-5))])
def test_sigmoid_rampup_values(epoch, expected):
    assert losses.sigmoid_rampup(epoch, 100) == pytest.approx(expected)


def test_sigmoid_rampup_zero_length_means_no_rampup():
    assert losses.sigmoid_rampup(0, 0) == 1.0
    assert 5 * losses.sigmoid_rampup(0, 100) == pytest.approx(0.0337, abs=1e-4)  # w(0) of CIFAR-10


def ref_nt_xent(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = i + n if i < n else i - n
        num = math.exp(float(z[i] @ z[pos]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def test_nt_xent_matches_reference():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert losses.nt_xent(z1, z2, 0.5).item() == pytest.approx(ref_nt_xent(z1, z2, 0.5), rel=1e-5)


def test_moco_infonce_matches_reference():
    g = torch.Generator().manual_seed(1)
    q, k, queue = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(9, 3, generator=g)
    qn, kn, negs = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    total = 0.0
    for i in range(4):
        pos = math.exp(float(qn[i] @ kn[i]) / 0.2)
        neg = sum(math.exp(float(qn[i] @ negs[j]) / 0.2) for j in range(9))
        total += -math.log(pos / (pos + neg))
    assert losses.moco_infonce(q, k, queue, 0.2).item() == pytest.approx(total / 4, rel=1e-5)


@pytest.mark.parametrize("which", ["simclr", "moco"])
def test_contrastive_losses_fall_in_a_few_steps(which):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    x = torch.randn(32, 8)
    queue = torch.randn(64, 4)

    def loss_fn():
        v1, v2 = x + 0.05 * torch.randn_like(x), x + 0.05 * torch.randn_like(x)
        if which == "simclr":
            return losses.nt_xent(net(v1), net(v2), 0.5)
        return losses.moco_infonce(net(v1), net(v2).detach(), queue, 0.2)
    torch.manual_seed(1)
    first = sum(loss_fn().item() for _ in range(5)) / 5
    for _ in range(40):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    last = sum(loss_fn().item() for _ in range(5)) / 5
    assert last < 0.8 * first


def test_moco_momentum_update():
    from lsdc.pretrain import momentum_update
    q, k = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    kq = [p.detach().clone() for p in q.parameters()]
    kk = [p.detach().clone() for p in k.parameters()]
    momentum_update(k, q, 0.9)
    for new, old_k, old_q in zip(k.parameters(), kk, kq):
        assert torch.allclose(new, 0.9 * old_k + 0.1 * old_q)
    assert all(torch.equal(a, b) for a, b in zip(q.parameters(), kq))   # the query encoder is untouched


def test_moco_queue_is_a_fifo_of_normalised_keys():
    from lsdc.pretrain import MoCoQueue
    queue = MoCoQueue(5, 2, "cpu", torch.Generator().manual_seed(0))
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(5))
    a = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    queue.enqueue(a)
    assert torch.allclose(queue.keys[:3], F.normalize(a, dim=1)) and queue.ptr == 3
    b = torch.tensor([[0.0, -1.0], [-1.0, 0.0], [5.0, 5.0]])
    old4 = queue.keys[2].clone()
    queue.enqueue(b)                                    # wraps around: slots 3, 4, 0
    assert torch.allclose(queue.keys[3], b[0]) and torch.allclose(queue.keys[4], b[1])
    assert torch.allclose(queue.keys[0], F.normalize(b[2:3], dim=1)[0]) and queue.ptr == 1
    assert torch.allclose(queue.keys[2], old4)          # the newest of the first batch survives
