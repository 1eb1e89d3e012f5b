"""RICAP and MixUp with pairwise targets, both RICAP target modes, on hand-made cases."""
import numpy as np
import pytest
import torch

from lsdc.mixing import MixPlan, mix_target, mixup, no_mix, ricap


def s_matrix(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, b, generator=g) > 0.5).float()


@pytest.mark.parametrize("mode", ["reference", "corrected"])
def test_identity_permutations_reduce_to_unmixed_target(mode):
    s = s_matrix()
    plan = MixPlan("ricap", [0.1, 0.2, 0.3, 0.4], [None, None, None, None])
    assert torch.allclose(mix_target(s, plan, mode), s)
    ident = torch.arange(5)
    plan = MixPlan("ricap", [0.25] * 4, [ident] * 4)
    assert torch.allclose(mix_target(s, plan, mode), s)


def test_reference_permutes_clean_index_corrected_permutes_mosaic_index():
    s = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    perm = torch.tensor([1, 2, 0])
    plan = MixPlan("ricap", [0.5, 0.5, 0.0, 0.0], [None, perm, None, None])
    ref = mix_target(s, plan, "reference")
    cor = mix_target(s, plan, "corrected")
    # hand-computed: T_ij = 0.5 S_ij + 0.5 S[i, perm[j]]  vs  0.5 S_ij + 0.5 S[perm[i], j]
    for i in range(3):
        for j in range(3):
            assert ref[i, j].item() == pytest.approx(0.5 * s[i, j] + 0.5 * s[i, perm[j]])
            assert cor[i, j].item() == pytest.approx(0.5 * s[i, j] + 0.5 * s[perm[i], j])
    assert not torch.allclose(ref, cor)


def test_mixup_target_mixes_along_mosaic_index():
    s = s_matrix(4, 1)
    perm = torch.tensor([3, 2, 1, 0])
    t = mix_target(s, MixPlan("mixup", [0.7, 0.3], [None, perm]), "reference")
    assert torch.allclose(t, 0.7 * s + 0.3 * s[perm, :])
    assert mix_target(s, MixPlan("none", [1.0], [None])) is s


def test_ricap_mosaic_is_made_of_the_planned_patches():
    b, h, w = 6, 8, 8
    # each image is constant = its index, so a pixel tells which image it came from
    x1 = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 2, h, w).contiguous()
    x2 = x1 + 100
    rng = np.random.default_rng(3)
    for _ in range(20):
        m1, m2, plan = ricap(x1, x2, rng, 0.3)
        assert m1.shape == x1.shape and m2.shape == x2.shape
        assert plan.kind == "ricap" and len(plan.weights) == 4
        assert sum(plan.weights) == pytest.approx(1.0)
        # area weights are the pixel shares of the images in each mosaic
        for i in range(b):
            share = {}
            for wt, perm in zip(plan.weights, plan.perms):
                if wt == 0:
                    continue
                src = i if perm is None else int(perm[i])
                share[src] = share.get(src, 0.0) + wt
            vals, counts = m1[i, 0].unique(return_counts=True)
            got = {int(v): c.item() / (h * w) for v, c in zip(vals, counts)}
            assert got == pytest.approx(share)
            vals2 = (m2[i, 0] - 100).unique()
            assert set(int(v) for v in vals2) == set(got)
        # identity exactly when the patch covers more than a quarter of the image
        for wt, perm in zip(plan.weights, plan.perms):
            assert (perm is None) == (wt > 0.25)


def test_ricap_mosaic_is_a_2x2_tiling_of_crops():
    # pixel value = its position in the source image: inside one patch, a step along dim 3
    # adds 1 and a step along dim 2 adds W; each row/column crosses at most one patch border
    b, h, w = 4, 8, 8
    base = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w).expand(b, 1, h, w).contiguous()
    rng = np.random.default_rng(0)
    for _ in range(20):
        m1, m2, _ = ricap(base, base.clone(), rng, 0.3)
        for m in (m1, m2):
            for i in range(b):
                img = m[i, 0]
                assert ((img[:, 1:] - img[:, :-1]) != 1).sum(1).max() <= 1
                assert ((img[1:, :] - img[:-1, :]) != w).sum(0).max() <= 1


def test_mixup_views_and_plan():
    x1, x2 = torch.randn(5, 3), torch.randn(5, 3)
    rng = np.random.default_rng(0)
    m1, m2, plan = mixup(x1, x2, rng, 0.3)
    lam, perm = plan.weights[0], plan.perms[1]
    assert torch.allclose(m1, lam * x1 + (1 - lam) * x1[perm])
    assert torch.allclose(m2, lam * x2 + (1 - lam) * x2[perm])
    n1, n2, p = no_mix(x1, x2, rng)
    assert n1 is x1 and n2 is x2 and p.kind == "none"
