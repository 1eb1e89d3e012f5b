"""Studies: a declaration of axes, the shared command line, planning, and the debug mode.

A study script is a few lines::

    STUDY = Study(name="batch_size", title="Table 5: impact of batch size (SNE)",
                  base={"labeler": "sne"},
                  variants=[Variant(str(b), {"batch_size": b}, seeds=10 if b == 256 else 2)
                            for b in (64, 128, 256, 512)])
    if __name__ == "__main__":
        raise SystemExit(main(STUDY))

:func:`main` parses the shared flags, validates every trial's config (and the storage, the
datasets and cached checkpoints) before any compute, then either runs one trial in-process
(``--debug``) or hands the plan to the Ray Tune adapter (:mod:`lsdc.harness`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import data as data_mod
from .config import ConfigError, Env, TrialConfig, make_config, parse_override, preset
from .models import CheckpointError
from .storage import StorageError


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


@dataclass(frozen=True)
class Planned:
    """One unit of work of a study: a clustering trial or a k-means baseline."""
    study: str
    variant: str
    row: str
    kind: str
    cfg: TrialConfig

    @property
    def key(self) -> str:
        return ("km-" if self.kind == "kmeans" else "") + self.cfg.key()

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "variant": self.variant, "row": self.row, "kind": self.kind,
                "key": self.key, "trial": self.cfg.to_dict()}


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0,1,2"`` or ``"0-9"`` (or a mix) -> explicit list; empty or duplicates are errors."""
    if text is None:
        return None
    seeds: list[int] = []
    for part in (p.strip() for p in text.replace(" ", ",").split(",")):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise StudyError(f"--seeds: {part!r} is not a non-negative integer or a range like 0-9")
        seeds.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    if not seeds:
        raise StudyError("--seeds: empty list; give e.g. --seeds 0,1,2 or --seeds 0-9")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise StudyError(f"--seeds: duplicate seed {dup[0]}; each seed may appear once")
    return seeds


def plan(study: Study, dataset: str, seeds: list[int] | None = None, overrides: dict[str, Any] | None = None,
         notes: list[str] | None = None) -> list[Planned]:
    """Every trial of ``study`` on ``dataset``, validated (ConfigError on the first bad one)."""
    overrides = overrides or {}
    known = preset(dataset)
    out: list[Planned] = []
    for v in study.variants:
        if any(known.get(f) is None and f not in overrides and f not in v.overrides for f in v.requires):
            if notes is not None:
                notes.append(f"{v.label}: supplement Table 1 has no {'/'.join(v.requires)} for {dataset}; skipped")
            continue
        for seed in (seeds if seeds is not None else range(v.seeds or study.default_seeds)):
            cfg = make_config(dataset, **{**study.base, **overrides, **v.overrides, "seed": seed})
            out.append(Planned(study.name, v.label, v.row, v.kind, cfg))
    if not out:
        raise StudyError(f"study {study.name}: nothing to run on {dataset}")
    return out


# ---------------------------------------------------------------------------- command line
def build_parser(study: Study) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python studies/{study.name}.py", description=f"{study.title}. {study.description}".strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="cifar10", help="registered dataset or a path to an .npz file; "
                   f"registered: {', '.join(data_mod.DATASETS)} (digits: embedded, runs on a laptop)")
    p.add_argument("--seeds", help="explicit seeds, e.g. 0,1,2 or 0-9 (default: the paper's count per column)")
    p.add_argument("--epochs", type=int, help="shorten the clustering stage (lr steps and ramp-up rescale)")
    p.add_argument("--pretrain-epochs", type=int, help="shorten the self-supervised pretraining")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="override any trial config field for every trial, e.g. --set mixing=none")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial (0.25 packs four trials on one GPU); default 1 if the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial")
    p.add_argument("--address", default=None, help="join an existing Ray cluster (or set RAY_ADDRESS); "
                   "default: start a local one")
    p.add_argument("--storage", default="results", help="results folder (shared by all nodes) or a URI Ray accepts")
    p.add_argument("--data-root", default=None, help="where datasets live on every node (default: $LSDC_DATA or ./data)")
    p.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    p.add_argument("--checkpoint-every", type=int, default=None, help="epochs between trial checkpoints "
                   "(default: a tenth of the epochs)")
    p.add_argument("--max-failures", type=int, default=2, help="restarts of a failed trial from its checkpoint")
    p.add_argument("--resume", action="store_true", help="continue the study's previous run in this storage "
                   "(re-running the same command does the same)")
    p.add_argument("--debug", action="store_true", help="run ONE tiny trial in-process on digits (no Ray), in seconds")
    p.add_argument("--quiet", action="store_true", help="no live progress lines")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard with the local cluster, "
                   "bound to 127.0.0.1 only (off by default)")
    return p


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


def parse_args(study: Study, argv: Sequence[str] | None = None) -> StudyArgs:
    return study_args(build_parser(study).parse_args(argv))


def study_args(a: argparse.Namespace) -> StudyArgs:
    """The shared flags, checked, from a namespace of :func:`build_parser` (or an extension of it)."""
    overrides = dict(parse_override(o) for o in a.overrides)
    if a.epochs is not None:
        overrides["epochs"] = a.epochs
    if a.pretrain_epochs is not None:
        overrides["pretrain_epochs"] = a.pretrain_epochs
    if a.gpus_per_trial is not None and a.gpus_per_trial < 0:
        raise StudyError(f"--gpus-per-trial: must be >= 0, got {a.gpus_per_trial}")
    if a.cpus_per_trial <= 0:
        raise StudyError(f"--cpus-per-trial: must be > 0, got {a.cpus_per_trial}")
    if a.checkpoint_every is not None and a.checkpoint_every < 1:
        raise StudyError(f"--checkpoint-every: must be >= 1, got {a.checkpoint_every}")
    if a.max_failures < 0:
        raise StudyError(f"--max-failures: must be >= 0, got {a.max_failures}")
    storage = a.storage if "://" in a.storage else os.path.abspath(a.storage)
    data_root = os.path.abspath(a.data_root) if a.data_root else Env().data_root
    cache = storage if "://" not in storage else Env().cache_dir
    env = Env(data_root=data_root, cache_dir=cache, download=a.download)
    return StudyArgs(dataset=a.dataset, seeds=parse_seeds(a.seeds), overrides=overrides,
                     gpus_per_trial=a.gpus_per_trial, cpus_per_trial=a.cpus_per_trial,
                     address=a.address or os.environ.get("RAY_ADDRESS"), storage=storage, env=env,
                     checkpoint_every=a.checkpoint_every, max_failures=a.max_failures, resume=a.resume,
                     debug=a.debug, quiet=a.quiet, dashboard=a.dashboard)


DEBUG = dict(width=0.125, epochs=2, pretrain_epochs=2, device="cpu")


def run_debug(study: Study, args: StudyArgs) -> int:
    """ONE tiny trial (the study's headline variant) on digits, in this process, no Ray."""
    from .pretrain import kmeans_baseline
    from .trial import Trial
    v = study.variants[study.debug_variant]
    over = {**DEBUG, **study.base, **v.overrides, **args.overrides}
    over["batch_size"] = min(over.get("batch_size", 128), 256)
    over.setdefault("seed", (args.seeds or [0])[0])
    cfg = make_config("digits", **over)
    print(f"[debug] {study.name}: variant {v.label!r} ({v.kind}) on digits, tiny network, in-process", flush=True)
    t0 = time.perf_counter()
    if v.kind == "kmeans":
        res = kmeans_baseline(cfg, args.env, log=print, n_init=2)
        print(f"[debug] k-means acc {res['acc']:.4f} in {time.perf_counter() - t0:.1f} s")
        return 0
    trial = Trial(cfg, args.env, log=print)
    for m in trial:
        print(f"[debug] epoch {m['epoch']}/{cfg.epochs} loss {m['loss']:.4f} acc {m.get('acc', float('nan')):.4f} "
              f"({m['epoch_s']:.2f} s)", flush=True)
    print(f"[debug] done in {time.perf_counter() - t0:.1f} s: acc {trial.history[-1].get('acc', float('nan')):.4f}"
          f"{' (diverged)' if trial.diverged else ''}")
    return 1 if trial.diverged else 0


def main(study: Study, argv: Sequence[str] | None = None) -> int:
    """Entry point of every study script; returns the process exit code."""
    try:
        args = parse_args(study, argv)
        if args.debug:
            return run_debug(study, args)
        notes: list[str] = []
        planned = plan(study, args.dataset, args.seeds, args.overrides, notes)
        for n in notes:
            print(f"note: {n}")
        from . import harness  # Ray is imported only once the input is known to be valid
        return harness.run_study(study, planned, args)
    except (ConfigError, StudyError, StorageError, data_mod.DatasetError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------- search
SEARCH = Study(name="search", title="Hyperparameter search (Optuna TPE under Ray Tune, ASHA)",
               description="Searches the labeler's parameter, lambda, T and the learning rate.",
               variants=(Variant("search", {}),))
OBJECTIVES = ("acc", "label_free")


def search_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``studies/search.py``."""
    parser = build_parser(SEARCH)
    parser.add_argument("--trials", type=int, default=40, help="number of configurations to try in all")
    parser.add_argument("--objective", default="acc", choices=OBJECTIVES,
                        help="acc: uses the labels (benchmarks); label_free: augmentation stability x cluster "
                             "balance, usable without labels")
    parser.add_argument("--labeler", choices=("cosine", "sne", "knn"), help="default: the dataset's preset")
    parser.add_argument("--max-concurrent", type=int, default=4, help="trials sampled ahead of their results")
    parser.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler")
    parser.add_argument("--no-asha", action="store_true", help="run every trial to the end")
    try:
        extra = parser.parse_args(argv)
        args = study_args(extra)
        if extra.trials < 1:
            raise StudyError(f"--trials: must be >= 1, got {extra.trials}")
        if extra.max_concurrent < 1:
            raise StudyError(f"--max-concurrent: must be >= 1, got {extra.max_concurrent}")
        over = dict(args.overrides)
        if extra.labeler:
            over["labeler"] = extra.labeler
        if args.debug:
            return run_debug(Study(name="search", title=SEARCH.title, variants=(Variant("search", over),)), args)
        seed = (args.seeds or [0])[0]
        base = make_config(args.dataset, **{**over, "seed": seed})
        from . import harness
        return harness.run_search(base, args, extra.trials, extra.objective, extra.max_concurrent,
                                  extra.sampler_seed, asha=not extra.no_asha)
    except (ConfigError, StudyError, StorageError, data_mod.DatasetError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
