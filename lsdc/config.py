"""The trial configuration: one frozen, validated dataclass, and the dataset presets.

``make_config("cifar10", batch_size=128)`` takes the dataset's preset (supplement Table 1)
and applies overrides; construction validates every field and raises :class:`ConfigError`
with a one-line message naming the field and the allowed values. Machine paths (data root,
storage, caches) are deliberately not part of it: see :class:`Env`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from . import data as data_mod

LABELERS = ("cosine", "sne", "knn")
# the config fields each labeler takes, in the order of its function's arguments after the features
LABELER_PARAMS = {"cosine": ("cosine_tau",), "sne": ("sne_tau", "sne_temperature"), "knn": ("knn_k",)}
MIXINGS = ("ricap", "mixup", "none")
RICAP_TARGETS = ("reference", "corrected")
HEADS = ("linear", "mlp")
PRETRAINS = ("rotnet", "simclr", "moco", "none")
PRETRAIN_AUGMENTS = ("standard", "strong")
OPTIMIZERS = ("sgd", "adam")
FROZEN_BN = ("train", "eval")
SHORTCUTS = ("free", "conv")
PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field and what is allowed."""


@dataclass(frozen=True)
class TrialConfig:
    """Everything that determines one clustering trial (and its pretrained backbone).

    Defaults are CIFAR-10's; use :func:`make_config` to start from a dataset's preset.
    """
    dataset: str = "cifar10"
    split: str = "all"                  # images trained on (reference: all = train + test)
    eval_split: str = "same"            # images evaluated: "same" as split (reference: transductive)
    # model
    width: float = 1.0                  # channel multiplier of the ResNet-18 (1.0 = 64..512)
    shortcut: str = "free"              # "free": reference's avg-pool + zero-pad; "conv": 1x1 conv + BN
    head: str = "linear"                # "linear" | "mlp" (Table 2's non-linear head)
    freeze_from: int = 3                # trainable from macro block #k (Table 3 numbering)
    frozen_bn: str = "train"            # BatchNorm of frozen blocks: "train" (reference) | "eval"
    # self-supervised pretraining of the backbone
    pretrain: str = "rotnet"
    pretrain_epochs: int = 200
    pretrain_seed: int = 0
    pretrain_batch_size: int = 128      # images per step (RotNet shows each at 4 rotations)
    pretrain_augment: str = "standard"  # "standard": crop + flip (Table 4: same for all); "strong": SimCLR's
    # pairwise labels
    labeler: str = "knn"
    cosine_tau: float | None = 0.9
    sne_tau: float | None = 0.01
    sne_temperature: float | None = 1.0
    knn_k: int | None = 20
    # losses
    use_mse: bool = True
    lam: float = 5.0                    # lambda of the consistency ramp-up
    rampup: int = 100                   # T, epochs of the sigmoid ramp-up (0: none)
    # mixing of the two augmented views
    mixing: str = "ricap"
    ricap_target: str = "reference"     # "reference" (permutes the clean index) | "corrected"
    mix_beta: float = 0.3
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_steps: tuple[int, ...] = (140, 180)
    lr_gamma: float = 0.1
    epochs: int = 220
    batch_size: int = 256
    seed: int = 0
    # execution: how, not what (still part of the record and the key)
    device: str = "auto"                # "auto" | "cpu" | "cuda" | "cuda:N"
    precision: str = "auto"             # "auto" (bf16 on CUDA, fp32 on CPU) | "fp32" | "bf16"
    fused_views: bool = False           # one forward of the three views (BatchNorm over 3B) instead of three
    compile: bool = False               # torch.compile the trainable part
    eval_every: int = 1                 # evaluate every k epochs (the last epoch always)

    def __post_init__(self) -> None:
        if isinstance(self.lr_steps, list):
            object.__setattr__(self, "lr_steps", tuple(self.lr_steps))
        _validate(self)

    # -- derived ---------------------------------------------------------------------
    @property
    def spec(self) -> data_mod.DatasetSpec:
        return data_mod.get_spec(self.dataset)

    @property
    def arch(self) -> str:
        return "resnet18" if self.spec.is_image else "mlp"

    @property
    def num_blocks(self) -> int:
        """Number of backbone macro blocks; the head is block #num_blocks."""
        return 4 if self.arch == "resnet18" else 3

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_steps"] = list(self.lr_steps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"{sorted(unknown)[0]}: unknown config field; allowed: {', '.join(field_names())}")
        return cls(**d)

    def key(self) -> str:
        """A stable id of the full config (every field, seed included): records and resume key on it."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> "TrialConfig":
        return dataclasses.replace(self, **changes)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrialConfig)]


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: unknown {value!r}; allowed: {', '.join(allowed)}")


def _number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
            integer: bool = False, lo_open: bool = False, hi_open: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        raise ConfigError(f"{name}: must be {'an integer' if integer else 'a finite number'}, got {value!r}")
    lo_bad = lo is not None and (value <= lo if lo_open else value < lo)
    hi_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if lo_bad or hi_bad:
        lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        raise ConfigError(f"{name}: must be {' and '.join(s for s in (lo_s, hi_s) if s)}, got {value!r}")


def _validate(c: TrialConfig) -> None:
    try:
        spec = c.spec
    except data_mod.DatasetError as e:
        raise ConfigError(str(e)) from None
    _choice("split", c.split, spec.splits)
    _choice("eval_split", c.eval_split, ("same",) + spec.splits)
    _number("width", c.width, 0.0, 8.0, lo_open=True)
    _choice("shortcut", c.shortcut, SHORTCUTS)
    _choice("head", c.head, HEADS)
    nb = 4 if spec.is_image else 3
    _number("freeze_from", c.freeze_from, 0, nb, integer=True)
    _choice("frozen_bn", c.frozen_bn, FROZEN_BN)
    _choice("pretrain", c.pretrain, PRETRAINS)
    if not spec.is_image and c.pretrain != "none":
        raise ConfigError(f"pretrain: {c.dataset!r} holds vectors, so only 'none' is allowed, got {c.pretrain!r}")
    _number("pretrain_epochs", c.pretrain_epochs, 1, integer=True)
    _number("pretrain_seed", c.pretrain_seed, 0, integer=True)
    _number("pretrain_batch_size", c.pretrain_batch_size, 2, integer=True)
    _choice("pretrain_augment", c.pretrain_augment, PRETRAIN_AUGMENTS)
    _choice("labeler", c.labeler, LABELERS)
    _number("batch_size", c.batch_size, 2, integer=True)
    for name in LABELER_PARAMS[c.labeler]:
        if getattr(c, name) is None:
            raise ConfigError(f"{name}: supplement Table 1 gives no value for {c.dataset!r} and labeler "
                              f"{c.labeler!r}; set it explicitly")
    if c.cosine_tau is not None:
        _number("cosine_tau", c.cosine_tau, -1.0, 1.0)
    if c.sne_tau is not None:
        _number("sne_tau", c.sne_tau, 0.0, 2.0, hi_open=True)
    if c.sne_temperature is not None:
        _number("sne_temperature", c.sne_temperature, 0.0, lo_open=True)
    if c.knn_k is not None:
        _number("knn_k", c.knn_k, 1, integer=True)
        if c.labeler == "knn" and c.knn_k >= c.batch_size:
            raise ConfigError(f"knn_k: must be < batch_size ({c.batch_size}), got {c.knn_k}")
    if not isinstance(c.use_mse, bool):
        raise ConfigError(f"use_mse: must be true or false, got {c.use_mse!r}")
    _number("lam", c.lam, 0.0)
    _number("rampup", c.rampup, 0, integer=True)
    _choice("mixing", c.mixing, MIXINGS)
    if c.mixing == "ricap" and not spec.is_image:
        raise ConfigError(f"mixing: 'ricap' needs images and {c.dataset!r} holds vectors; allowed: mixup, none")
    _choice("ricap_target", c.ricap_target, RICAP_TARGETS)
    _number("mix_beta", c.mix_beta, 0.0, lo_open=True)
    _choice("optimizer", c.optimizer, OPTIMIZERS)
    _number("lr", c.lr, 0.0, lo_open=True)
    _number("momentum", c.momentum, 0.0, 1.0, hi_open=True)
    _number("weight_decay", c.weight_decay, 0.0)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in c.lr_steps) or \
            list(c.lr_steps) != sorted(set(c.lr_steps)):
        raise ConfigError(f"lr_steps: must be strictly increasing positive epoch numbers, got {list(c.lr_steps)}")
    _number("lr_gamma", c.lr_gamma, 0.0, 1.0, lo_open=True)
    _number("epochs", c.epochs, 1, integer=True)
    _number("seed", c.seed, 0, integer=True)
    dev = c.device
    if not (dev in ("auto", "cpu", "cuda") or (isinstance(dev, str) and dev.startswith("cuda:")
                                                and dev[5:].isdigit())):
        raise ConfigError(f"device: unknown {dev!r}; allowed: auto, cpu, cuda, cuda:N")
    _choice("precision", c.precision, PRECISIONS)
    for name in ("fused_views", "compile"):
        if not isinstance(getattr(c, name), bool):
            raise ConfigError(f"{name}: must be true or false, got {getattr(c, name)!r}")
    _number("eval_every", c.eval_every, 1, integer=True)


# ------------------------------------------------------------------------------ presets
# Supplement Table 1, one dict per dataset ('-' in the table is None here), plus our own
# preset for scikit-learn's digits (8x8, 1,797 images: sized for a laptop CPU).
_T1 = dict(cosine_tau=None, sne_tau=None, sne_temperature=None, knn_k=None)
PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": dict(optimizer="sgd", epochs=220, lr_steps=(140, 180), lr=0.1, lam=5.0, rampup=100,
                    cosine_tau=0.9, sne_tau=0.01, sne_temperature=1.0, knn_k=20, labeler="knn"),
    "cifar100-20": dict(optimizer="sgd", epochs=200, lr_steps=(170,), lr=0.1, lam=25.0, rampup=150,
                        cosine_tau=0.95, sne_tau=0.01, sne_temperature=0.5, knn_k=10, labeler="knn"),
    "stl10": dict(_T1, optimizer="sgd", epochs=200, lr_steps=(140, 180), lr=0.1, lam=5.0, rampup=50,
                  sne_tau=0.01, sne_temperature=0.5, labeler="sne"),
    "mnist": dict(_T1, optimizer="sgd", epochs=15, lr_steps=(), lr=0.1, lam=5.0, rampup=50, knn_k=10,
                  labeler="knn"),
    "reuters10k": dict(_T1, optimizer="adam", epochs=75, lr_steps=(), lr=0.001, lam=25.0, rampup=100,
                       knn_k=5, labeler="knn", pretrain="none", freeze_from=0, mixing="none",
                       weight_decay=0.0),
    # ours: a tiny network and short schedules so that a trial takes seconds on 2 CPU cores.
    # RotNet features of 8x8 digits are poor (k-means ACC ~0.27, kNN-pair precision ~0.46);
    # SimCLR with its strong augmentation gives k-means ACC ~0.9, so digits pretrains with it.
    "digits": dict(optimizer="sgd", epochs=20, lr_steps=(16,), lr=0.05, lam=2.0, rampup=5,
                   cosine_tau=0.9, sne_tau=0.01, sne_temperature=3.0, knn_k=10, labeler="knn",
                   width=0.25, batch_size=128, freeze_from=2, pretrain="simclr", pretrain_augment="strong",
                   pretrain_epochs=20, pretrain_batch_size=128),
}
# Datasets without a preset of their own (users' .npz files) start from CIFAR-10's.
DEFAULT_PRESET = "cifar10"


def preset(dataset: str) -> dict[str, Any]:
    return dict(PRESETS.get(dataset, PRESETS[DEFAULT_PRESET]))


def make_config(dataset: str = "digits", *, scale_schedule: bool = True, **overrides: Any) -> TrialConfig:
    """A validated config: the dataset's preset (Table 1), then ``overrides``.

    With ``scale_schedule`` (default), overriding ``epochs`` alone rescales the preset's
    learning-rate steps and ramp-up length T in proportion (so ``epochs=22`` on CIFAR-10
    drops the lr at 14 and 18 and ramps up over 10 epochs); explicit ``lr_steps`` or
    ``rampup`` overrides win. MixUp gets the supplement's weight decay 1e-4 unless
    ``weight_decay`` is given.
    """
    names = set(field_names())
    for k in overrides:
        if k not in names:
            raise ConfigError(f"{k}: unknown config field; allowed: {', '.join(sorted(names))}")
    try:
        data_mod.get_spec(dataset)
    except data_mod.DatasetError as e:
        raise ConfigError(str(e)) from None
    values = preset(dataset)
    values["dataset"] = dataset
    if scale_schedule and "epochs" in overrides and overrides["epochs"] != values.get("epochs"):
        _number("epochs", overrides["epochs"], 1, integer=True)
        ratio = overrides["epochs"] / values["epochs"]
        if "lr_steps" not in overrides:
            steps = sorted({max(1, round(s * ratio)) for s in values["lr_steps"]})
            values["lr_steps"] = tuple(s for s in steps if s < overrides["epochs"]) or ()
        if "rampup" not in overrides:
            values["rampup"] = max(0, round(values["rampup"] * ratio))
    if overrides.get("mixing", values.get("mixing")) == "mixup" and "weight_decay" not in overrides:
        values["weight_decay"] = 1e-4
    values.update(overrides)
    if "lr_steps" in values:
        values["lr_steps"] = tuple(values["lr_steps"])
    return TrialConfig(**values)


def parse_override(text: str) -> tuple[str, Any]:
    """``name=value`` from the command line; the value is read as JSON, else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"--set: expected NAME=VALUE, got {text!r}")
    name, raw = text.split("=", 1)
    name = name.strip().replace("-", "_")
    if name not in field_names():
        raise ConfigError(f"{name}: unknown config field; allowed: {', '.join(sorted(field_names()))}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = {"True": True, "False": False, "None": None}.get(raw, raw)
    if name == "lr_steps" and isinstance(value, int):
        value = (value,)
    return name, value


@dataclass(frozen=True)
class Env:
    """Machine paths, kept apart from the experiment's config."""
    data_root: str = field(default_factory=lambda: os.environ.get("LSDC_DATA", os.path.abspath("data")))
    cache_dir: str = field(default_factory=lambda: os.environ.get(
        "LSDC_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lsdc")))
    download: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
