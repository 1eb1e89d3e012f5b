"""The trial configuration: one frozen, validated dataclass, and the dataset presets.

``make_config("cifar10", batch_size=128)`` takes the dataset's preset (supplement Table 1)
and applies overrides; construction validates every field and raises :class:`ConfigError`
with a one-line message naming the field and the allowed values. Machine paths (data root,
storage, caches) are deliberately not part of it: see :class:`Env`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from . import data as data_mod
from . import registry
from .registry import RegistryError

# Choices that are not extension points (labelers, mixings, pretraining methods and heads
# are: see lsdc.registry).
OPTIMIZERS = ("sgd", "adam")
FROZEN_BN = ("train", "eval")
SHORTCUTS = ("free", "conv")
PRECISIONS = ("fp32", "tf32", "bf16", "auto")
FAMILY_FIELDS = ("labeler", "mixing", "pretrain", "head")


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
    # "fp32" (the reference code's numerics, default) | "tf32" (CUDA: TF32 matmuls and convolutions;
    # fp32 on CPUs) | "bf16" (autocast of the forward passes) | "auto" (bf16 on CUDA, fp32 on CPUs)
    precision: str = "fp32"
    fused_views: bool = False           # one forward of the three views (BatchNorm over 3B) instead of three
    compile: bool = False               # torch.compile the trainable part
    eval_every: int = 1                 # evaluate every k epochs (the last epoch always)
    # parameters of registered entries that are not fields above (plugins): name -> value
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.lr_steps, list):
            object.__setattr__(self, "lr_steps", tuple(self.lr_steps))
        if isinstance(self.extra, dict):
            object.__setattr__(self, "extra", tuple(sorted(self.extra.items())))
        _validate(self)

    def param(self, name: str) -> Any:
        """The value of a field or of a registered entry's parameter (from ``extra``)."""
        if name in _FIELDS:
            return getattr(self, name)
        extra = dict(self.extra)
        if name in extra:
            return extra[name]
        p = registry.all_params().get(name)
        if p is None:
            raise ConfigError(f"{name}: unknown config field or registered parameter")
        return p.default

    def entries(self) -> list[registry.Entry]:
        """The registry entries this config chooses (labeler, mixing, pretraining, head)."""
        return [registry.FAMILIES[f].get(getattr(self, f)) for f in FAMILY_FIELDS]

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
        """Every field (``extra`` as a dict, and only when it holds something)."""
        d = {f: getattr(self, f) for f in _FIELDS if f != "extra"}
        d["lr_steps"] = list(self.lr_steps)
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialConfig":
        d = dict(d)
        extra = dict(d.pop("extra", None) or {})
        for k in [k for k in d if k not in _FIELDS]:
            if registry.param_owner(k) is None and k not in registry.all_params():
                raise ConfigError(f"{k}: unknown config field; allowed: {', '.join(field_names())}")
            extra[k] = d.pop(k)
        return cls(**d, extra=extra)

    def key(self, fingerprint: str | None = None) -> str:
        """The trial key of this config on data with ``fingerprint`` (see :mod:`lsdc.keys`):
        a hash of the effective configuration only, with ``precision`` resolved."""
        from .keys import trial_key
        return trial_key(self, fingerprint)

    def replace(self, **changes: Any) -> "TrialConfig":
        return dataclasses.replace(self, **changes)


_FIELDS = tuple(f.name for f in dataclasses.fields(TrialConfig))


def field_names() -> list[str]:
    return [f for f in _FIELDS if f != "extra"]


def settable_names() -> list[str]:
    """Config fields and every registered entry's parameters: what ``--set`` accepts."""
    return sorted(set(field_names()) | set(registry.all_params()))


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
    nb = 4 if spec.is_image else 3
    _number("freeze_from", c.freeze_from, 0, nb, integer=True)
    _choice("frozen_bn", c.frozen_bn, FROZEN_BN)
    _number("batch_size", c.batch_size, 2, integer=True)
    entries = []
    for fam in FAMILY_FIELDS:
        try:
            entries.append(registry.FAMILIES[fam].get(getattr(c, fam)))
        except RegistryError as e:
            raise ConfigError(str(e)) from None
    for e in entries:
        if e.needs_images and not spec.is_image:
            allowed = [x.name for x in registry.FAMILIES[e.family].entries() if not x.needs_images]
            raise ConfigError(f"{e.family}: {e.name!r} needs images and {c.dataset!r} holds vectors; "
                              f"allowed: {', '.join(allowed)}")
        for p in e.params:
            value = c.param(p.name)
            if value is None:
                raise ConfigError(f"{p.name}: supplement Table 1 gives no value for {c.dataset!r} and "
                                  f"{e.family} {e.name!r}; set it explicitly")
            why = p.check(value)
            if why:
                raise ConfigError(f"{p.name}: {why}")
    # parameters of entries not chosen are kept as they are, but must still be valid when set
    for name, p in registry.all_params().items():
        value = c.param(name) if name in _FIELDS or name in dict(c.extra) else None
        if value is not None and p.check(value):
            raise ConfigError(f"{name}: {p.check(value)}")
    for e in entries:
        why = e.check(c) if e.check else None
        if why:
            raise ConfigError(why)
    if not isinstance(c.use_mse, bool):
        raise ConfigError(f"use_mse: must be true or false, got {c.use_mse!r}")
    _number("lam", c.lam, 0.0)
    _number("rampup", c.rampup, 0, integer=True)
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
    unknown = [k for k in dict(c.extra) if k not in registry.all_params()]
    if unknown:
        raise ConfigError(f"{unknown[0]}: no registered entry declares this parameter")


# ------------------------------------------------------------------------------ presets
# A dataset's preset is its registered core values (supplement Table 1's row, or ours for
# digits: see lsdc.data) plus, for every registered labeler / mixing / pretraining method /
# head, that entry's values for the dataset ('-' in Table 1 is None: set it explicitly).
# Datasets without a preset of their own (users' .npz files) start from CIFAR-10's.
DEFAULT_PRESET = "cifar10"


# The core fields a search varies (the chosen entries' parameters add their own spaces).
SEARCH_CORE = (
    registry.Param("lam", float, lo=0.0, search=("float", 0.5, 50.0, True), help="lambda of the MSE ramp-up"),
    registry.Param("rampup", int, lo=0, search=lambda b: ("int", 0, int(b["epochs"]), False),
                   help="T, epochs of the ramp-up"),
    registry.Param("lr", float, lo=0.0, lo_open=True, help="learning rate",
                   search=lambda b: ("float", *((1e-4, 1e-2) if b["optimizer"] == "adam" else (1e-3, 0.5)), True)),
)


def resolve_precision_name(precision: str, device_type: str) -> str:
    """``auto`` is bf16 on CUDA and fp32 elsewhere; anything else stays as it is (``tf32`` too:
    on CPUs it computes in fp32, but keeps its name, so that a precision study's rows stay apart)."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


def preset(dataset: str) -> dict[str, Any]:
    """The preset of ``dataset``: core values, then every registered entry's parameters."""
    name = dataset if data_mod.DATASETS.get(dataset) is not None and data_mod.DATASETS[dataset].preset \
        else DEFAULT_PRESET
    values = dict(data_mod.DATASETS[name].preset)
    for reg in registry.FAMILIES.values():
        for e in reg.entries():
            for p in e.params:
                if p.name in values and p.name not in e.presets.get(name, {}):
                    continue
                values[p.name] = e.presets.get(name, {}).get(p.name, values.get(p.name, p.default))
    return values


# ------------------------------------------------------------------ reduced presets for CPUs
# ``mnist-cpu``: MNIST (the same images and labels as ``mnist``: torchvision's files, or
# mnist_train.npz / mnist_test.npz under the data root) with a preset for 2 CPU cores: a
# quarter-width ResNet-18, 4 RotNet epochs (the group's recipe) and 10 clustering epochs (Table
# 1's MNIST row otherwise: kNN k=10, lambda 5, no lr steps, the ramp-up T=50 of 15 epochs
# rescaled to 33 of 10). Measured on the 2-core VM (README, "MNIST on a CPU"): ACC 97.1 % (k-means
# on the same backbone 40.8 %); the clustering stage took 70 min (training 267 s and evaluating
# 70,000 images 149 s per epoch), the RotNet stage 64 min on one busy core.
MNIST_CPU = dict(optimizer="sgd", lr=0.1, epochs=10, lr_steps=(), lam=5.0, rampup=33, labeler="knn", knn_k=10,
                 width=0.25, pretrain="rotnet", pretrain_epochs=4, pretrain_recipe="group")
MNIST_NPZ = ("mnist_train.npz", "mnist_test.npz")


def _load_mnist_any(root: str, split: str, download: bool):
    """MNIST from torchvision's files, or from ``mnist_{train,test}.npz`` (``images``, ``labels``)."""
    import numpy as np
    if all(os.path.exists(os.path.join(root, f)) for f in MNIST_NPZ):
        parts = []
        for part in (("train", "test") if split == "all" else (split,)):
            with np.load(os.path.join(root, f"mnist_{part}.npz")) as z:
                parts.append((z["images"].astype(np.uint8), z["labels"].astype(np.int64)))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if not download and not all(os.path.exists(os.path.join(root, f)) for f in data_mod.DATASETS["mnist"].files):
        raise data_mod.DatasetError(
            f"dataset 'mnist-cpu': not found under data root {root!r} (expected {', '.join(MNIST_NPZ)} or "
            f"{', '.join(data_mod.DATASETS['mnist'].files)}); pass --download or point --data-root at a copy")
    return data_mod.DATASETS["mnist"].loader(root, split, download)


if "mnist-cpu" not in data_mod.DATASETS:
    data_mod.register_dataset(dataclasses.replace(
        data_mod.DATASETS["mnist"], name="mnist-cpu", files=(), loader=_load_mnist_any, preset=MNIST_CPU,
        source="MNIST (torchvision files or mnist_{train,test}.npz), reduced CPU preset"))


def presets() -> dict[str, dict[str, Any]]:
    """The preset of every registered dataset that has one (Table 1 reads this)."""
    return {n: preset(n) for n, s in data_mod.DATASETS.items() if s.preset}


def make_config(dataset: str = "digits", *, scale_schedule: bool = True, **overrides: Any) -> TrialConfig:
    """A validated config: the dataset's preset (Table 1), then ``overrides``.

    ``overrides`` may name any field or any registered entry's parameter. With
    ``scale_schedule`` (default), overriding ``epochs`` alone rescales the preset's
    learning-rate steps and ramp-up length T in proportion (so ``epochs=22`` on CIFAR-10
    drops the lr at 14 and 18 and ramps up over 10 epochs), and a preset's evaluation interval
    shrinks in proportion (digits: every 5 of 40 epochs, every epoch of a 2-epoch run); explicit
    ``lr_steps``, ``rampup`` or ``eval_every`` overrides win. A chosen entry's ``implies`` (MixUp: weight decay 1e-4) apply
    unless the field is given.
    """
    names = set(settable_names())
    for k in overrides:
        if k not in names:
            raise ConfigError(f"{k}: unknown config field; allowed: {', '.join(sorted(names))}")
    try:
        data_mod.get_spec(dataset)
    except data_mod.DatasetError as e:
        raise ConfigError(str(e)) from None
    values = preset(dataset)
    values["dataset"] = dataset
    if "pretrain_recipe" in values and not {"train", "test"} <= set(data_mod.get_spec(dataset).splits):
        # users' .npz files start from CIFAR-10's preset, but have no canonical test split:
        # RotNet keeps lsdc 0.1's recipe there (as on digits)
        values["pretrain_recipe"] = "lsdc-0.1"
    if scale_schedule and "epochs" in overrides and overrides["epochs"] != values.get("epochs"):
        _number("epochs", overrides["epochs"], 1, integer=True)
        ratio = overrides["epochs"] / values["epochs"]
        if "lr_steps" not in overrides:
            steps = sorted({max(1, round(s * ratio)) for s in values["lr_steps"]})
            values["lr_steps"] = tuple(s for s in steps if s < overrides["epochs"]) or ()
        if "rampup" not in overrides:
            values["rampup"] = max(0, round(values["rampup"] * ratio))
        if "eval_every" not in overrides and values.get("eval_every", 1) > 1:
            values["eval_every"] = max(1, min(values["eval_every"], round(values["eval_every"] * ratio)))
    for fam in FAMILY_FIELDS:
        name = overrides.get(fam, values.get(fam, getattr(TrialConfig, fam)))
        if name in registry.FAMILIES[fam]:
            for k, v in registry.FAMILIES[fam].get(name).implies.items():
                if k not in overrides:
                    values[k] = v
    values.update(overrides)
    if "lr_steps" in values:
        values["lr_steps"] = tuple(values["lr_steps"])
    # parameters that are not fields go to ``extra``, those of the chosen entries only
    chosen = set()
    for fam in FAMILY_FIELDS:
        name = values.get(fam, getattr(TrialConfig, fam))
        if name in registry.FAMILIES[fam]:
            chosen |= set(registry.FAMILIES[fam].get(name).param_names)
    extra = {k: values.pop(k) for k in [k for k in values if k not in _FIELDS]}
    extra = {k: v for k, v in extra.items() if k in chosen or k in overrides}
    return TrialConfig(**values, extra=extra)


def parse_override(text: str) -> tuple[str, Any]:
    """``name=value`` from the command line; the value is read as JSON, else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"--set: expected NAME=VALUE, got {text!r}")
    name, raw = text.split("=", 1)
    name = name.strip().replace("-", "_")
    if name not in settable_names():
        raise ConfigError(f"{name}: unknown config field; allowed: {', '.join(settable_names())}")
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
