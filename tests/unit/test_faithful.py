"""Issue 11: the reference numerics by default (fp32; TF32 and bf16 on request), RotNet as the
LSD-C group trains it (k-han/AutoNovel), and per-trial diagnostics that never touch training."""
import numpy as np
import pytest
import torch

from conftest import tiny
from lsdc import data as data_mod
from lsdc import pretrain as pre
from lsdc.config import ConfigError, TrialConfig, make_config, resolve_precision_name
from lsdc.keys import LEGACY, trial_key
from lsdc.metrics import cluster_size_stats, pair_agreement, pair_scores
from lsdc.records import trial_record
from lsdc.runtime import exact_fp32
from lsdc.trial import Trial

QUIET = lambda s: None  # noqa: E731
FP = "0123456789abcdef"


# ------------------------------------------------------------------------------ precision
def test_precision_defaults_to_fp32_and_offers_tf32():
    assert TrialConfig().precision == "fp32"
    assert make_config("cifar10").precision == "fp32" and make_config("digits").precision == "fp32"
    assert make_config("digits", precision="tf32").precision == "tf32"
    assert resolve_precision_name("tf32", "cpu") == "tf32"          # kept apart from fp32 in a study
    assert resolve_precision_name("auto", "cuda") == "bf16"          # "auto" keeps its meaning
    with pytest.raises(ConfigError, match="precision"):
        make_config("digits", precision="fp16")


def test_exact_fp32_turns_tf32_off_and_restores_it():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with exact_fp32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ------------------------------------------------------------------------- RotNet recipe
def test_group_recipe_is_the_default_where_a_test_split_exists(tmp_path):
    for ds in ("cifar10", "cifar100-20", "stl10", "mnist"):
        assert make_config(ds).param("pretrain_recipe") == "group", ds
    assert make_config("digits", pretrain="rotnet").param("pretrain_recipe") == "lsdc-0.1"
    path = tmp_path / "mine.npz"
    np.savez(path, images=np.zeros((20, 8, 8, 1), np.uint8), labels=np.arange(20) % 2)
    assert make_config(str(path)).param("pretrain_recipe") == "lsdc-0.1"
    with pytest.raises(ConfigError, match="pretrain_recipe"):
        make_config("digits", pretrain="rotnet", pretrain_recipe="group")


def test_legacy_recipe_keeps_lsdc_0_1_keys_and_backbone_files():
    assert LEGACY["pretrain_recipe"] == "lsdc-0.1"
    legacy = make_config("cifar10", pretrain_recipe="lsdc-0.1")
    bare = TrialConfig.from_dict({k: v for k, v in legacy.to_dict().items() if k != "extra"})
    assert trial_key(legacy, FP) == trial_key(bare, FP) == "4870ad3e17555db3"   # the golden cifar10 key
    group = make_config("cifar10")
    assert trial_key(group, FP) != trial_key(legacy, FP)
    assert "pretrain_recipe" not in pre.backbone_identity(legacy, FP)
    assert pre.backbone_identity(group, FP)["pretrain_recipe"] == "group"
    assert pre.backbone_key(group, FP) != pre.backbone_key(legacy, FP) == pre.backbone_key(bare, FP)


def _lr_per_epoch(recipe: str, epochs: int = 10, steps: int = 3) -> list[float]:
    cfg = make_config("cifar10", pretrain_epochs=epochs, pretrain_recipe=recipe)
    rot = pre.RotNet.__new__(pre.RotNet)
    rot.step_per_batch = recipe != "group"
    opt, sched = pre._rotnet_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))], steps)
    lrs = []
    for _ in range(epochs):        # the loop of pretrain_backbone, without the data
        if not rot.step_per_batch:
            sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        for _ in range(steps):
            opt.step()
            if rot.step_per_batch:
                sched.step()
    return lrs


def test_group_schedule_drops_the_rate_one_epoch_earlier():
    group, legacy = _lr_per_epoch("group"), _lr_per_epoch("lsdc-0.1")
    # 10 epochs: milestones 60/120/160(/200) of 200 -> epochs 3, 6, 8 (and 10 for the group)
    first_drop = lambda lrs: next(i for i, lr in enumerate(lrs, 1) if lr < 0.1)  # noqa: E731
    assert first_drop(legacy) == 4 and first_drop(group) == 3
    assert group[2:9] == pytest.approx(legacy[3:10])
    assert group[-1] == pytest.approx(0.1 * 0.2 ** 4)


@pytest.fixture
def split_dataset():
    """A registered image dataset whose train and test splits differ (48 and 20 images)."""
    rng = np.random.default_rng(0)
    parts = {"train": (rng.integers(0, 256, (48, 8, 8, 1), dtype=np.uint8), np.arange(48) % 4),
             "test": (rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8), np.arange(20) % 4)}

    def load(root, split, download):
        if split == "all":
            return (np.concatenate([parts["train"][0], parts["test"][0]]),
                    np.concatenate([parts["train"][1], parts["test"][1]]))
        return parts[split]
    spec = data_mod.DatasetSpec("tt-synth", "image", 4, channels=1, size=8, mean=(0.5,), std=(0.25,), pad=1,
                                loader=load)
    data_mod.register_dataset(spec)
    yield spec
    data_mod.DATASETS.pop("tt-synth")


def test_group_recipe_trains_on_the_training_split_and_keeps_the_best_test_epoch(split_dataset, env, monkeypatch):
    cfg = make_config("tt-synth", pretrain="rotnet", pretrain_recipe="group", pretrain_epochs=3,
                      pretrain_batch_size=16, width=0.125, device="cpu", batch_size=8, knn_k=4)
    scripted, snapshots, seen = iter([0.3, 0.6, 0.5]), [], []

    def accuracy(self, x, aug, batch=1024):
        seen.append(len(x))
        snapshots.append({k: v.clone() for k, v in self.net[0].state_dict().items()})
        return next(scripted)
    monkeypatch.setattr(pre.RotNet, "accuracy", accuracy)
    ds = data_mod.load("tt-synth", env.data_root, "all")
    state, stats = pre.pretrain_backbone(cfg, ds, QUIET, env)
    assert stats["pretrain_split"] == "train" and stats["n_pretrain"] == 48 and seen == [20, 20, 20]
    assert stats["best_epoch"] == 2 and stats["test_rot_acc"] == 0.6 and stats["recipe"] == "group"
    assert all(torch.equal(state[k], snapshots[1][k]) for k in state)
    assert not all(torch.equal(state[k], snapshots[2][k]) for k in state)
    legacy, lstats = pre.pretrain_backbone(cfg.replace(extra={"pretrain_recipe": "lsdc-0.1"}), ds, QUIET, env)
    assert lstats["n_pretrain"] == 68 and "best_epoch" not in lstats and len(seen) == 3


def test_rotation_accuracy_uses_no_class_labels_and_is_a_fraction(split_dataset, env):
    cfg = make_config("tt-synth", pretrain="rotnet", width=0.125, device="cpu", batch_size=8, knn_k=4)
    from lsdc.augment import Augmenter
    from lsdc.models import make_backbone
    ctx = pre._Context(torch.device("cpu"), "fp32", None, None, None, 20)
    rot = pre.RotNet(cfg, make_backbone("resnet18", 1, 0.125, "free"), ctx)
    x = torch.from_numpy(data_mod.load("tt-synth", env.data_root, "test").x)
    acc = rot.accuracy(x, Augmenter(split_dataset, "cpu"))
    assert 0.0 <= acc <= 1.0 and (acc * 80) == pytest.approx(round(acc * 80))


def test_group_normalisation_is_the_loaders_own():
    spec = pre.pretrain_spec(make_config("cifar10"), data_mod.get_spec("cifar10"))
    assert spec.mean == pytest.approx((0.4914, 0.4824, 0.4467), abs=1e-4)
    assert spec.std == pytest.approx((0.2471, 0.2435, 0.2616), abs=1e-4)
    same = pre.pretrain_spec(make_config("mnist"), data_mod.get_spec("mnist"))   # none in the loader: ours
    assert same.mean == (0.1307,)
    legacy = pre.pretrain_spec(make_config("cifar10", pretrain_recipe="lsdc-0.1"), data_mod.get_spec("cifar10"))
    assert legacy.mean == (0.4914, 0.4822, 0.4465)


# ---------------------------------------------------------------------------- diagnostics
def test_pair_metrics_on_a_hand_made_case():
    y = np.array([0, 0, 1, 1])
    s = np.eye(4)
    s[0, 1] = s[1, 0] = 1          # a true pair
    s[0, 2] = s[2, 0] = 1          # a false pair
    out = pair_scores([(s, y)])
    assert out["pair_precision"] == 0.5 and out["pair_recall"] == 0.5 and out["pos_frac"] == 4 / 12
    agree = pair_agreement([(s, np.eye(4) + np.fliplr(np.eye(4)) * 0)])
    assert agree["pair_flip_frac"] == 4 / 12 and agree["pos_agreement"] == 0.0
    assert pair_agreement([(s, s)]) == {"pair_flip_frac": 0.0, "pos_agreement": 1.0}
    st = cluster_size_stats([0, 0, 0, 0], 3)
    assert st["nonempty_clusters"] == 1 and st["size_entropy"] == 0.0
    assert cluster_size_stats([0, 1, 2], 3)["size_entropy"] == pytest.approx(np.log(3))


def _small_trial(cfg):
    """A trial on the first 256 digits with a freshly seeded random backbone (seconds in bf16 on a CPU)."""
    from lsdc.models import build_model
    ds = data_mod.load("digits")
    torch.manual_seed(cfg.seed)
    return Trial(cfg, ds.x[:256], ds.y[:256], build_model(cfg, 10), spec=ds.spec, log=QUIET)


@pytest.mark.pipeline
def test_diagnostics_in_every_epoch_and_record_and_training_unchanged(monkeypatch):
    cfg = tiny(epochs=2, precision="bf16")
    with_diag = _small_trial(cfg)
    hist = list(with_diag)
    for m in hist:
        for k in ("pair_precision", "pair_recall", "pos_frac", "pair_flip_frac", "pos_agreement",
                  "nonempty_clusters", "size_entropy"):
            assert k in m and np.isfinite(m[k]), k
        assert 0 < m["pos_agreement"] <= 1 and 0 <= m["pair_flip_frac"] < 0.5
    bd = with_diag.backbone_meta["diagnostics"]
    assert 0 < bd["kmeans_acc"] <= 1 and 0 < bd["pair_precision"] <= 1 and bd["sample"] == 256
    rec = trial_record(study="s", variant="v", row="", key=with_diag.key, cfg=with_diag.cfg, data=with_diag.data,
                       history=with_diag.history, status="finished", confusion=None, device=with_diag.device,
                       setup_s=0.0, backbone={"file": "b.pt", **with_diag.backbone_meta})
    assert rec["diagnostics"]["backbone"]["kmeans_acc"] == bd["kmeans_acc"]
    assert rec["diagnostics"]["final"]["pair_precision"] == hist[-1]["pair_precision"]
    assert rec["precision"] == "bf16"
    # evaluated every 2 epochs: the diagnostics come with the evaluations, not in between
    sparse = list(_small_trial(tiny(epochs=3, eval_every=2, precision="bf16")))
    assert ["acc" in m for m in sparse] == ["pair_precision" in m for m in sparse] == [False, True, True]
    # the same trial with no diagnostics at all trains exactly the same
    monkeypatch.setattr(Trial, "pair_diagnostics", lambda self: {})
    monkeypatch.setattr(Trial, "backbone_diagnostics", lambda self: {})
    plain = list(_small_trial(cfg))
    for a, b in zip(hist, plain):
        assert (a["loss"], a["bce"], a["mse"], a["acc"]) == (b["loss"], b["bce"], b["mse"], b["acc"])
    assert "pair_precision" not in plain[-1]


def test_fp32_trial_agrees_with_itself():
    m = _small_trial(tiny(epochs=1)).run_epoch()
    assert m["pair_flip_frac"] == 0.0 and m["pos_agreement"] == 1.0


def test_precision_study_variants_and_debug_variant():
    """fp32 / TF32 / bf16, and --debug runs bf16 (autocast on the CPU): its run is
    tests/runner/test_studies.py::test_each_study_debug_mode[precision]."""
    from lsdc.studies import PRECISION, STUDIES
    assert STUDIES["precision"] is PRECISION and [v.overrides["precision"] for v in PRECISION.variants] == \
        ["fp32", "tf32", "bf16"]
    assert PRECISION.variants[PRECISION.debug_variant].label == "bf16"


# ------------------------------------------------------------------------------ mnist-cpu
def test_mnist_cpu_preset_and_its_npz_loader(tmp_path):
    cfg = make_config("mnist-cpu")
    assert (cfg.width, cfg.epochs, cfg.pretrain_epochs, cfg.pretrain, cfg.labeler, cfg.knn_k) == \
        (0.25, 10, 4, "rotnet", "knn", 10)
    assert cfg.param("pretrain_recipe") == "group" and cfg.lr_steps == () and cfg.rampup == 33
    assert data_mod.get_spec("mnist-cpu").mean == data_mod.get_spec("mnist").mean
    rng = np.random.default_rng(0)
    for part, n in (("train", 6), ("test", 4)):
        np.savez(tmp_path / f"mnist_{part}.npz", images=rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                 labels=np.arange(n) % 10)
    assert len(data_mod.load("mnist-cpu", str(tmp_path), "all")) == 10
    assert len(data_mod.load("mnist-cpu", str(tmp_path), "train")) == 6
    with pytest.raises(data_mod.DatasetError, match="mnist_train.npz"):
        data_mod.load("mnist-cpu", str(tmp_path / "nowhere"), "all")
