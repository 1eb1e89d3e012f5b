"""Studies as data: their declaration (:class:`Study`, :class:`Variant`), the shared
arguments of a run (:class:`StudyArgs`) and planning (:func:`plan` -> :class:`Planned`).

Planning validates every trial's config, resolves what "auto" means where the trials will
run (the numeric precision) and fingerprints the data, so that each planned trial has its
final key before anything is computed. Imports neither torch nor ray.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from . import data as data_mod
from .config import Env, TrialConfig, make_config, preset, resolve_precision_name
from .keys import kmeans_key, legacy_v1_candidates, trial_key


class StudyError(ValueError):
    """A study that cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class Variant:
    """One column (and optionally row) of a study's table."""
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    kind: str = "trial"                 # "trial": LSD-C clustering; "kmeans": k-means baseline
    seeds: int | None = None            # default number of seeds (the paper's), else the study's
    row: str = ""                       # for two-axis tables (Table 4): the row label
    requires: tuple[str, ...] = ()      # preset fields that must exist for the dataset (Table 1 '-')


@dataclass(frozen=True)
class Study:
    """A study: its table's columns (variants), what they share (base), and the paper's numbers.

    ``paper[dataset][label]`` (or ``paper[dataset][(row, label)]`` for two-axis tables) is the
    supplement's ACC in percent, as printed ("81.7±0.9")."""
    name: str
    title: str
    variants: tuple[Variant, ...]
    base: dict[str, Any] = field(default_factory=dict)
    default_seeds: int = 2
    debug_variant: int = 0
    description: str = ""
    paper: dict[str, dict[Any, str]] = field(default_factory=dict)
    paper_note: str = ""
    # the paper's number of seeds behind each ``paper`` cell, same keys (an int per cell)
    paper_n: dict[str, dict[Any, int]] = field(default_factory=dict)
    # the column the others are compared with (within each row): a label, or a function of the
    # dataset giving the label (None: no reference for that dataset)
    reference: Any = None

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(v.label for v in self.variants))

    @property
    def rows(self) -> list[str]:
        return list(dict.fromkeys(v.row for v in self.variants))

    @property
    def axes(self) -> set[str]:
        """The config fields the study's variants set: its own axes."""
        return {k for v in self.variants for k in v.overrides}


@dataclass(frozen=True)
class Planned:
    """One unit of work of a study: a clustering trial or a k-means baseline, with the
    fingerprint of its data and the device type it is planned for (which resolved
    ``precision``)."""
    study: str
    variant: str
    row: str
    kind: str
    cfg: TrialConfig
    fingerprint: str | None = None
    device_type: str = "cpu"

    @property
    def key(self) -> str:
        return kmeans_key(self.cfg, self.fingerprint) if self.kind == "kmeans" else trial_key(self.cfg, self.fingerprint)

    @property
    def legacy_keys(self) -> list[str]:
        """Keys under which lsdc 0.1 (record schema 1) stored the same trial. Only for
        registered datasets: a user's file may have changed since, and lsdc 0.1 did not
        fingerprint it, so its old records are shown but never reused."""
        if self.cfg.dataset not in data_mod.DATASETS:
            return []
        prefix = "km-" if self.kind == "kmeans" else ""
        return [prefix + k for k in legacy_v1_candidates(self.cfg, self.device_type)]

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "variant": self.variant, "row": self.row, "kind": self.kind,
                "key": self.key, "fingerprint": self.fingerprint, "device_type": self.device_type,
                "trial": self.cfg.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Planned":
        return cls(d["study"], d["variant"], d.get("row", ""), d.get("kind", "trial"),
                   TrialConfig.from_dict(d["trial"]), d.get("fingerprint"), d.get("device_type", "cpu"))


@dataclass
class StudyArgs:
    dataset: str
    seeds: list[int] | None
    overrides: dict[str, Any]
    gpus_per_trial: float | None
    cpus_per_trial: float
    address: str | None
    storage: str
    env: Env
    checkpoint_every: int | None
    max_failures: int
    resume: bool
    debug: bool
    quiet: bool
    dashboard: bool = False
    plugins: tuple[str, ...] = ()
    dry_run: bool = False
    smoke_test: bool = False
    callbacks: tuple[str, ...] = ()     # --callback names (mlflow, wandb, module:factory)
    searcher: str = "grid"              # "grid" (Ray Tune's grid) | "optuna" (Optuna's GridSampler)
    optuna_storage: str | None = None   # an Optuna storage URL or journal path (None: a journal in the storage)
    sampler: str = "tpe"


def check_args(a: Any) -> None:
    """Checks of a study's command line (an ``argparse`` namespace of ``lsdc.study``) that
    must refuse before anything is computed or written: one StudyError line each."""
    import math
    storage = getattr(a, "storage", None)
    if storage is not None and not str(storage).strip():
        raise StudyError("--storage: empty; give a folder or a URI (e.g. --storage results)")
    for flag, value, lo in (("--gpus-per-trial", getattr(a, "gpus_per_trial", None), 0.0),
                            ("--cpus-per-trial", getattr(a, "cpus_per_trial", None), 0.0)):
        if value is None:
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < lo \
                or (flag == "--cpus-per-trial" and value <= 0):
            raise StudyError(f"{flag}: must be a finite number {'> 0' if flag == '--cpus-per-trial' else '>= 0'}"
                             f", got {value}")
    names = [o.split("=", 1)[0].strip().replace("-", "_") for o in (getattr(a, "overrides", None) or [])]
    if "seed" in names:
        raise StudyError("--set seed: the seeds are chosen with --seeds (e.g. --seeds 0-9), not --set seed")
    if "dataset" in names:
        raise StudyError("--set dataset: the dataset is chosen with --dataset, not --set dataset")
    device = next((o.split("=", 1)[1].strip() for o in reversed(getattr(a, "overrides", None) or [])
                   if o.split("=", 1)[0].strip() == "device"), None)
    if device and device.startswith("cuda") and not (getattr(a, "address", None) or os.environ.get("RAY_ADDRESS")):
        check_local_device(device)


def check_local_device(device: str) -> None:
    """A CUDA device asked for on a local cluster must exist on this machine."""
    import torch
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    idx = device.partition(":")[2]
    if n == 0 or (idx.isdigit() and int(idx) >= n):
        raise StudyError(f"--set device={device}: this machine has {n or 'no'} CUDA device(s); "
                         f"use --set device=cpu (or auto), or --address a cluster with GPUs")


def parse_seeds(text: str | list[str] | None) -> list[int] | None:
    """``"0,1,2"``, ``"0-9"``, ``"0 1 2"`` (or a list of such parts) -> explicit list; empty
    or duplicates are errors."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        text = ",".join(text)
    seeds: list[int] = []
    for part in (p.strip() for p in text.replace(" ", ",").split(",")):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise StudyError(f"--seeds: {part!r} is not a non-negative integer or a range like 0-9")
        if hi and int(hi) < int(lo):
            raise StudyError(f"--seeds: empty range {part!r}; write it low-high, e.g. 0-9")
        seeds.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    if not seeds:
        raise StudyError("--seeds: empty list; give e.g. --seeds 0,1,2 or --seeds 0-9")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise StudyError(f"--seeds: duplicate seed {dup[0]}; each seed may appear once")
    return seeds


def resolve(cfg: TrialConfig, env: Env, device_type: str) -> tuple[TrialConfig, str]:
    """``cfg`` with ``precision`` resolved for ``device_type``, and the fingerprint of the data
    it trains on (:func:`lsdc.data.fingerprint`, computed once per process and file version):
    what every planned trial's key needs."""
    cfg = replace(cfg, precision=resolve_precision_name(cfg.precision, device_type))
    return cfg, data_mod.fingerprint(cfg.dataset, env.data_root, cfg.split, env.download)


def plan(study: Study, dataset: str, seeds: list[int] | None = None, overrides: dict[str, Any] | None = None,
         notes: list[str] | None = None, env: Env | None = None, device_type: str = "cpu") -> list[Planned]:
    """Every trial of ``study`` on ``dataset``, validated (ConfigError on the first bad one),
    with ``precision`` resolved for ``device_type`` and the data fingerprinted."""
    overrides = overrides or {}
    env = env or Env()
    if dataset.endswith(".npz"):      # each trial runs in another folder: a relative path would not be found
        dataset = os.path.abspath(os.path.expanduser(dataset))
    known = preset(dataset)
    out: list[Planned] = []
    for v in study.variants:
        if any(known.get(f) is None and f not in overrides and f not in v.overrides for f in v.requires):
            if notes is not None:
                notes.append(f"{v.label}: supplement Table 1 has no {'/'.join(v.requires)} for {dataset}; skipped")
            continue
        for seed in (seeds if seeds is not None else range(v.seeds or study.default_seeds)):
            cfg = make_config(dataset, **{**study.base, **overrides, **v.overrides, "seed": seed})
            cfg, fingerprint = resolve(cfg, env, device_type)
            out.append(Planned(study.name, v.label, v.row, v.kind, cfg, fingerprint, device_type))
    if not out:
        raise StudyError(f"study {study.name}: nothing to run on {dataset}")
    return out


def dataset_tag(dataset: str) -> str:
    """A short name for folders and experiment names (a path's file name without .npz)."""
    return os.path.basename(dataset).replace(".npz", "")
