"""The command line of every study script: shared flags, the debug mode, and hand-over to
the runner.

A study script is a few lines::

    STUDY = Study(name="batch_size", title="Table 5: impact of batch size (SNE)",
                  base={"labeler": "sne"},
                  variants=[Variant(str(b), {"batch_size": b}, seeds=10 if b == 256 else 2)
                            for b in (64, 128, 256, 512)])
    if __name__ == "__main__":
        raise SystemExit(main(STUDY))

:func:`main` parses the shared flags, plans and validates every trial (:mod:`lsdc.planning`:
configs, the data's fingerprint, the storage and cached checkpoints) before any compute,
then either runs one trial in-process (``--debug``) or hands the plan to the runner
(:mod:`lsdc.runner`, which holds every Ray and Optuna call).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

from . import data as data_mod
from .config import ConfigError, Env, make_config, parse_override
from .models import CheckpointError
from .planning import Planned, Study, StudyArgs, StudyError, Variant, parse_seeds, plan  # noqa: F401 (API)
from .registry import LABELERS, RegistryError, load_plugins
from .storage import StorageError
from .planning import check_args

ERRORS = (ConfigError, StudyError, StorageError, data_mod.DatasetError, CheckpointError, RegistryError)


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
    p.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                   help="import MODULE (which registers labelers, mixings, ...) here and in every Ray worker; "
                        "also $LSDC_PLUGINS or the lsdc.plugins entry point")
    return p


def parse_args(study: Study, argv: Sequence[str] | None = None) -> StudyArgs:
    return study_args(build_parser(study).parse_args(argv))


def study_args(a: argparse.Namespace) -> StudyArgs:
    """The shared flags, checked, from a namespace of :func:`build_parser` (or an extension of it)."""
    check_args(a)
    load_plugins(a.plugins)
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
                     debug=a.debug, quiet=a.quiet, dashboard=a.dashboard, plugins=tuple(a.plugins))


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
    trial = Trial.from_config(cfg, args.env, log=print)
    for m in trial:
        print(f"[debug] epoch {m['epoch']}/{cfg.epochs} loss {m['loss']:.4f} acc {m.get('acc', float('nan')):.4f} "
              f"({m['epoch_s']:.2f} s)", flush=True)
    print(f"[debug] done in {time.perf_counter() - t0:.1f} s: acc {trial.history[-1].get('acc', float('nan')):.4f}"
          f"{' (diverged)' if trial.diverged else ''}")
    return 1 if trial.diverged else 0


def planned_device_type(args: StudyArgs) -> str:
    """Where the trials will run, for resolving ``precision=auto`` at planning: CUDA when
    GPUs are asked for (or, by default, when this machine has one), else CPU. For a cluster
    given by --address without --gpus-per-trial, the runner checks the cluster's resources."""
    if args.gpus_per_trial is not None:
        return "cuda" if args.gpus_per_trial > 0 else "cpu"
    if args.address:
        return "cpu"
    try:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def main(study: Study, argv: Sequence[str] | None = None) -> int:
    """Entry point of every study script; returns the process exit code."""
    try:
        args = parse_args(study, argv)
        if args.debug:
            return run_debug(study, args)
        notes: list[str] = []
        planned = plan(study, args.dataset, args.seeds, args.overrides, notes, args.env, planned_device_type(args))
        for n in notes:
            print(f"note: {n}")
        from .runner.orchestrate import run_study  # Ray is imported only once the input is known to be valid
        return run_study(study, planned, args)
    except ERRORS as e:
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
    parser.add_argument("--labeler", choices=LABELERS.names(), help="default: the dataset's preset")
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
        from .runner.search import run_search
        return run_search(base, args, extra.trials, extra.objective, extra.max_concurrent,
                          extra.sampler_seed, asha=not extra.no_asha)
    except ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
