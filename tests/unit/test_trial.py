"""Short real runs of the clustering trial on the embedded digits data (CPU)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lsdc import Trial, make_config
from lsdc.models import CheckpointError
from lsdc.pretrain import backbone_path, ensure_backbone, kmeans_baseline, load_backbone
from conftest import tiny

QUIET = lambda s: None  # noqa: E731


@pytest.mark.pipeline
def test_two_epoch_digits_trial_loss_falls(env):
    trial = Trial.from_config(tiny(epochs=2), env, log=QUIET)
    hist = list(trial)
    assert [m["epoch"] for m in hist] == [1, 2]
    assert hist[1]["bce"] < hist[0]["bce"]
    for key in ("loss", "acc", "nmi", "ari", "confident_frac", "epoch_s", "images_per_s", "lr", "w_cons"):
        assert key in hist[-1]
    assert 0.0 <= hist[-1]["acc"] <= 1.0 and hist[-1]["images_per_s"] > 0
    assert trial.done and not trial.diverged


def test_frozen_parameters_unchanged_trainable_changed_after_a_step(env):
    trial = Trial.from_config(tiny(freeze_from=3), env, log=QUIET)
    before = {n: p.detach().clone() for n, p in trial.model.named_parameters()}
    trial.train_step(trial.x[:64], w_cons=1.0)
    changed = {n for n, p in trial.model.named_parameters() if not torch.equal(before[n], p)}
    frozen = {n for n, p in trial.model.named_parameters() if not p.requires_grad}
    assert frozen and not (changed & frozen)
    assert changed == {n for n, p in trial.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.layer4") for n in changed) and "head.weight" in changed


@pytest.mark.pipeline
def test_same_seed_same_metrics_on_cpu(env):
    a = list(Trial.from_config(tiny(seed=3), env, log=QUIET))
    b = list(Trial.from_config(tiny(seed=3), env, log=QUIET))
    c = list(Trial.from_config(tiny(seed=4), env, log=QUIET))
    assert [m["acc"] for m in a] == [m["acc"] for m in b] and [m["loss"] for m in a] == [m["loss"] for m in b]
    assert [m["loss"] for m in a] != [m["loss"] for m in c]


@pytest.mark.pipeline
def test_checkpoint_and_resume_match_an_uninterrupted_run(env, tmp_path):
    cfg = tiny(epochs=3)
    full = [m["loss"] for m in Trial.from_config(cfg, env, log=QUIET)]
    first = Trial.from_config(cfg, env, log=QUIET)
    first.run_epoch()
    first.save(tmp_path / "ck.pt")
    resumed = Trial.from_config(cfg, env, log=QUIET)
    resumed.load(str(tmp_path / "ck.pt"))
    rest = [m["loss"] for m in resumed]
    assert len(resumed.history) == 3 and resumed.epoch == 3
    assert [full[0]] + rest == pytest.approx(full, rel=1e-6)
    other = Trial.from_config(tiny(epochs=3, seed=9), env, log=QUIET)
    with pytest.raises(CheckpointError, match="is for trial .*, not this trial"):
        other.load(str(tmp_path / "ck.pt"))


@pytest.mark.parametrize("overrides", [dict(labeler="cosine"), dict(labeler="sne", mixing="mixup"),
                                       dict(mixing="none", fused_views=True),
                                       dict(ricap_target="corrected", head="mlp", use_mse=False),
                                       dict(frozen_bn="eval", freeze_from=4)])
def test_variants_run(env, overrides):
    hist = list(Trial.from_config(tiny(epochs=1, **overrides), env, log=QUIET))
    assert np.isfinite(hist[-1]["loss"]) and "acc" in hist[-1]


def test_vector_dataset_with_mlp(env, tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 20)) * 3
    y = rng.integers(0, 3, 120)
    path = str(tmp_path / "vecs.npz")
    np.savez(path, x=(centers[y] + rng.normal(size=(120, 20))).astype(np.float32), y=y)
    cfg = make_config(path, pretrain="none", mixing="mixup", freeze_from=0, batch_size=32, knn_k=5, epochs=2,
                      device="cpu")
    trial = Trial.from_config(cfg, env, log=QUIET)
    hist = list(trial)
    assert trial.model.backbone.__class__.__name__ == "MLPBackbone"
    assert np.isfinite(hist[-1]["loss"])


def test_divergence_is_detected_and_stops_the_trial(env):
    trial = Trial.from_config(tiny(epochs=3, lr=1e12, lam=1e6, rampup=0), env, log=QUIET)
    hist = list(trial)
    assert trial.diverged and hist[-1].get("diverged") is True
    assert len(hist) < 3 or not np.isfinite(hist[-1]["loss"])


@pytest.mark.parametrize("method", ["rotnet", "simclr", "moco"])
def test_pretraining_methods_produce_a_cached_loadable_backbone(env, method):
    cfg = tiny(pretrain=method, pretrain_epochs=1, pretrain_batch_size=64)
    logs = []
    path = ensure_backbone(cfg, env, log=logs.append)
    from lsdc.data import fingerprint
    assert path == backbone_path(cfg, env.cache_dir, fingerprint("digits")) and os.path.exists(path)
    assert any("saved" in line for line in logs)
    again = []
    assert ensure_backbone(cfg, env, log=again.append) == path and again == []  # reused, not retrained
    from lsdc.models import build_model
    meta = load_backbone(build_model(cfg).backbone, path, cfg)
    assert meta["method"] == method and np.isfinite(meta["final_loss"])


def test_corrupt_or_foreign_backbone_checkpoint_is_refused(env, tmp_path):
    cfg = tiny()
    path = ensure_backbone(cfg, env, log=QUIET)
    from lsdc.models import build_model
    broken = tmp_path / "broken.pt"
    broken.write_bytes(open(path, "rb").read()[:100])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_backbone(build_model(cfg).backbone, str(broken), cfg)
    with pytest.raises(CheckpointError, match="another setting.*width"):
        load_backbone(build_model(cfg).backbone, path, cfg.replace(width=0.25))


def test_kmeans_baseline(env):
    res = kmeans_baseline(tiny(), env, log=QUIET, n_init=2)
    assert set(res) >= {"acc", "nmi", "ari"} and 0.1 < res["acc"] <= 1.0


@pytest.mark.pipeline
def test_command_line_single_trial(env, tmp_path):
    out = subprocess.run([sys.executable, "-m", "lsdc", "--epochs", "2", "--pretrain-epochs", "1",
                          "--set", "width=0.125", "--cache-dir", env.cache_dir, "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "epoch   2/2" in out.stdout and "final: acc" in out.stdout
    assert (tmp_path / "r.json").exists()
    bad = subprocess.run([sys.executable, "-m", "lsdc", "--set", "labeler=spectral"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == \
        "error: labeler: unknown 'spectral'; allowed: cosine, sne, knn"
