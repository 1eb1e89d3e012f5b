"""The whole training step against a slow reference of the reference code's step, on tiny
tensors, and a Trial built in memory (no files)."""
import copy
import math

import numpy as np
import torch

from lsdc.augment import Augmenter
from lsdc.config import make_config
from lsdc.losses import sigmoid_rampup
from lsdc.mixing import ricap
from lsdc.models import build_model
from lsdc.trial import Trial


def _cfg(**kw):
    base = dict(pretrain="none", width=0.125, batch_size=12, epochs=2, device="cpu", precision="fp32", knn_k=4,
                freeze_from=2, mixing="ricap", labeler="knn", lr=0.05, weight_decay=5e-4, momentum=0.9)
    base.update(kw)
    return make_config("digits", **base)


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), rng.integers(0, 10, n)


def _trial(cfg, x, y):
    torch.manual_seed(cfg.seed)
    return Trial(cfg, x, y, build_model(cfg, 10), log=lambda s: None)


def slow_knn(f, k):
    """S_ij = 1 if d_ij is below the k-th smallest distance of row i or of column j (self included)."""
    b = len(f)
    d = [[float(((f[i] - f[j]) ** 2).sum()) if i != j else 0.0 for j in range(b)] for i in range(b)]
    kth_row = [sorted(d[i])[k - 1] for i in range(b)]
    kth_col = [sorted(d[r][j] for r in range(b))[k - 1] for j in range(b)]
    return torch.tensor([[1.0 if d[i][j] < kth_row[i] or d[i][j] < kth_col[j] else 0.0 for j in range(b)]
                         for i in range(b)])


def reference_step(model, opt_lr, momentum, wd, views, plan, k, w_cons, use_mse=True):
    """The reference code's step, written out: three forwards, labels from the clean view's
    detached features, the mixed view on the rows of P, MSE between the mixed views, SGD
    (first step: momentum buffer = gradient) on the trainable parameters only."""
    x, xb, xb2 = views
    logits, feats = zip(*(model(v) for v in (x, xb, xb2)))
    p, pb, pb2 = (torch.softmax(z, 1) for z in logits)
    s = slow_knn(feats[0].detach(), k)
    b = len(s)
    t = torch.zeros(b, b)
    for w, perm in zip(plan.weights, plan.perms):            # reference target: T_ij = sum_k W_k S[i, pi_k(j)]
        for i in range(b):
            for j in range(b):
                t[i, j] += w * s[i, j if perm is None else int(perm[j])]
    bce = 0.0
    for i in range(b):
        for j in range(b):
            pij_t = (pb[i] * p[j]).sum().clamp(0.0, 1.0)
            bce = bce - (t[i, j] * torch.log(pij_t + 1e-7) + (1 - t[i, j]) * torch.log(1 - pij_t + 1e-7))
    bce = bce / (b * b)
    mse = ((pb - pb2) ** 2).mean()
    loss = bce + w_cons * mse if use_mse else bce
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for prm in model.parameters():
            if prm.requires_grad and prm.grad is not None:
                prm -= opt_lr * (prm.grad + wd * prm)              # momentum buffer starts as the gradient
    return float(loss)


def test_training_step_equals_the_slow_reference():
    cfg = _cfg()
    x, y = _data()
    trial = _trial(cfg, x, y)
    ref_model = copy.deepcopy(trial.model)
    frozen_before = {n: p.detach().clone() for n, p in trial.model.named_parameters() if not p.requires_grad}
    gen_state, rng_state = trial.gen.get_state(), copy.deepcopy(trial.rng.bit_generator.state)
    xb = trial.x[:12]
    w = cfg.lam * sigmoid_rampup(0, cfg.rampup)
    loss = float(trial.train_step(xb, w)[0])
    # the same random draws for the reference: views from the same generator, RICAP from the same rng
    g = torch.Generator().manual_seed(0)
    g.set_state(gen_state)
    rng = np.random.default_rng(0)
    rng.bit_generator.state = rng_state
    aug = Augmenter(trial.spec, "cpu")
    views = [aug.standard(xb, g) for _ in range(3)]
    mb, mb2, plan = ricap(views[1], views[2], rng, cfg.mix_beta, "reference")
    ref_loss = reference_step(ref_model, cfg.lr, cfg.momentum, cfg.weight_decay, [views[0], mb, mb2], plan,
                              cfg.knn_k, w)
    assert math.isclose(loss, ref_loss, rel_tol=1e-5, abs_tol=1e-6)
    got = dict(trial.model.named_parameters())
    moved = 0
    for n, p in ref_model.named_parameters():
        torch.testing.assert_close(got[n], p, atol=2e-6, rtol=1e-5)
        moved += int(p.requires_grad)
    assert moved > 0
    for n, before in frozen_before.items():                     # frozen blocks: untouched
        assert torch.equal(got[n], before)


def test_trial_from_tensors_trains_an_epoch_without_files():
    cfg = _cfg(epochs=2)
    x, y = _data(48, seed=3)
    trial = _trial(cfg, torch.from_numpy(x), y)
    m = trial.run_epoch()
    assert m["epoch"] == 1 and math.isfinite(m["loss"]) and 0.0 <= m["acc"] <= 1.0
    assert trial.data["source"] == "in-memory arrays" and len(trial.key) == 16
    assert len(trial.history) == 1 and not trial.done
