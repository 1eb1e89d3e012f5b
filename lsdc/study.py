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
# --smoke-test (the Ray examples' convention): the whole study, small, through Ray, on digits
SMOKE = dict(epochs=2, pretrain_epochs=1, width=0.125, batch_size=64)
SEARCHERS = ("grid", "optuna")
SAMPLERS = ("tpe", "random", "cmaes", "gp")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each help text says its default once, itself."""


def build_parser(study: Study) -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(
        prog=f"python studies/{study.name}.py", description=f"{study.title}. {study.description}".strip(),
        formatter_class=_Formatter)
    p.add_argument("--version", action="version", version=f"lsdc {__version__}", help="print lsdc's version and exit")
    p.add_argument("--dataset", default="cifar10", help="registered dataset or a path to an .npz file (default: "
                   f"cifar10); registered: {', '.join(data_mod.DATASETS)} (digits: embedded, runs on a laptop)")
    p.add_argument("--seeds", nargs="+", metavar="SEEDS",
                   help="explicit seeds: 0,1,2 or 0-9 or 0 1 2 (default: the paper's count per column)")
    p.add_argument("--epochs", type=int, help="shorten the clustering stage (lr steps and ramp-up rescale)")
    p.add_argument("--pretrain-epochs", type=int, help="shorten the self-supervised pretraining")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="override a trial config field for every trial, e.g. --set mixing=none "
                        "(not the study's own axes" + (f": {', '.join(sorted(study.axes))}" if study.axes else "")
                        + ")")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial, 0.25 packs four trials on one GPU (default: 1 if the cluster has GPUs, "
                        "else 0)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default: 1)")
    p.add_argument("--address", default=None, help="join an existing Ray cluster, e.g. auto or HOST:6379 "
                   "(default: $RAY_ADDRESS, else start a private local one)")
    p.add_argument("--storage", default="results", help="results folder shared by all nodes, or a URI Ray accepts "
                   "(default: ./results)")
    p.add_argument("--data-root", default=None, help="where datasets live on every node (default: $LSDC_DATA or ./data)")
    p.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    p.add_argument("--checkpoint-every", type=int, default=None, help="epochs between trial checkpoints "
                   "(default: a tenth of the epochs)")
    p.add_argument("--max-failures", type=int, default=2, help="restarts of a failed trial from its checkpoint "
                   "(default: 2)")
    p.add_argument("--resume", action="store_true", help="continue the study's previous run in this storage "
                   "(re-running the same command does the same)")
    p.add_argument("--dry-run", action="store_true", help="list the planned trials, which are finished already "
                   "and the CPUs/GPUs each asks for, then exit (Ray is not started)")
    p.add_argument("--smoke-test", action="store_true", help="the whole study, small, through Ray, on digits: "
                   "one seed, " + ", ".join(f"{k} {v}" for k, v in SMOKE.items()) + " (under a minute on a laptop)")
    p.add_argument("--debug", action="store_true", help="run ONE tiny trial in-process on digits (no Ray), in seconds")
    p.add_argument("--quiet", action="store_true", help="no live progress view")
    p.add_argument("--callback", dest="callbacks", action="append", default=[], metavar="NAME",
                   help="an extra Ray Tune callback: mlflow, wandb (pip install 'lsdc[mlflow]' or 'lsdc[wandb]'; "
                        "configured by MLFLOW_TRACKING_URI, WANDB_PROJECT, ...), or MODULE:FACTORY, a function "
                        "returning a ray.tune.Callback; repeatable")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard with the local cluster, "
                   "bound to 127.0.0.1 only (off by default)")
    p.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                   help="import MODULE (which registers labelers, mixings, ...) here and in every Ray worker; "
                        "also $LSDC_PLUGINS or the lsdc.plugins entry point")
    return p


def add_optuna_flags(p: argparse.ArgumentParser, searcher: bool) -> None:
    """Where Optuna keeps its study and which sampler proposes; ``searcher``: also offer
    ``--searcher`` (an ablation study's grid run through Optuna)."""
    if searcher:
        p.add_argument("--searcher", choices=SEARCHERS, default="grid",
                       help="grid: Ray Tune's grid over the planned trials (default); optuna: the same grid "
                            "through Optuna's GridSampler, so the study also shows up as an Optuna study "
                            "(optuna-dashboard, trials_dataframe()); same trials, same records")
    p.add_argument("--optuna-storage", metavar="URL", default=None,
                   help="Optuna storage: sqlite:///path.db, an RDB URL (postgresql://..., mysql://...), or a "
                        "journal file path (default: a journal file in the storage's search/ folder)")
    if not searcher:
        p.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                       help="Optuna sampler (default: tpe); cmaes and gp need the optional packages that Optuna "
                            "names (cmaes; torch is installed already)")


def parse_args(study: Study, argv: Sequence[str] | None = None) -> StudyArgs:
    p = build_parser(study)
    add_optuna_flags(p, searcher=True)
    return study_args(p.parse_args(argv), study)


def study_args(a: argparse.Namespace, study: Study | None = None) -> StudyArgs:
    """The shared flags, checked, from a namespace of :func:`build_parser` (or an extension of it).
    With ``study``, ``--set`` on one of its own axes is refused."""
    check_args(a)
    load_plugins(a.plugins)
    overrides = dict(parse_override(o) for o in a.overrides)
    if study is not None:
        mine = sorted(k for k in overrides if k in study.axes)
        if mine:
            raise StudyError(f"--set {mine[0]}: {mine[0]} is this study's own axis (its columns set it: "
                             f"{', '.join(v.label for v in study.variants if mine[0] in v.overrides)}); "
                             "drop the --set, or declare another study")
    smoke = getattr(a, "smoke_test", False)
    if smoke:
        if a.debug:
            raise StudyError("--smoke-test and --debug: choose one (--debug runs one trial in-process, "
                             "--smoke-test the whole study small through Ray)")
        a.dataset = "digits"
        a.seeds = a.seeds or ["0"]
        for k, v in SMOKE.items():
            if study is None or k not in study.axes:
                overrides.setdefault(k, v)
    if a.epochs is not None:
        overrides["epochs"] = a.epochs
    if a.pretrain_epochs is not None:
        overrides["pretrain_epochs"] = a.pretrain_epochs
    if getattr(a, "searcher", "grid") == "optuna":
        # Tune checks that every report of a searched trial carries the searcher's metric (acc)
        if overrides.setdefault("eval_every", 1) != 1:
            raise StudyError(f"--set eval_every={overrides['eval_every']}: --searcher optuna reads ACC "
                             f"after every epoch; drop the --set or use --searcher grid")
    if a.gpus_per_trial is not None and a.gpus_per_trial < 0:
        raise StudyError(f"--gpus-per-trial: must be >= 0, got {a.gpus_per_trial}")
    if a.cpus_per_trial <= 0:
        raise StudyError(f"--cpus-per-trial: must be > 0, got {a.cpus_per_trial}")
    if a.checkpoint_every is not None and a.checkpoint_every < 1:
        raise StudyError(f"--checkpoint-every: must be >= 1, got {a.checkpoint_every}")
    if a.max_failures < 0:
        raise StudyError(f"--max-failures: must be >= 0, got {a.max_failures}")
    for c in a.callbacks:
        check_callback_name(c)
    storage = a.storage if "://" in a.storage else os.path.abspath(a.storage)
    data_root = os.path.abspath(a.data_root) if a.data_root else Env().data_root
    cache = storage if "://" not in storage else Env().cache_dir
    env = Env(data_root=data_root, cache_dir=cache, download=a.download)
    return StudyArgs(dataset=a.dataset, seeds=parse_seeds(a.seeds), overrides=overrides,
                     gpus_per_trial=a.gpus_per_trial, cpus_per_trial=a.cpus_per_trial,
                     address=a.address or os.environ.get("RAY_ADDRESS"), storage=storage, env=env,
                     checkpoint_every=a.checkpoint_every, max_failures=a.max_failures, resume=a.resume,
                     debug=a.debug, quiet=a.quiet, dashboard=a.dashboard, plugins=tuple(a.plugins),
                     dry_run=a.dry_run, smoke_test=smoke, callbacks=tuple(a.callbacks),
                     searcher=getattr(a, "searcher", "grid"), optuna_storage=getattr(a, "optuna_storage", None),
                     sampler=getattr(a, "sampler", "tpe"))


CALLBACKS = ("mlflow", "wandb")


def check_callback_name(name: str) -> None:
    """``mlflow``, ``wandb`` or ``module:factory``; anything else is refused in one line."""
    if name in CALLBACKS:
        return
    mod, _, fn = name.partition(":")
    if not mod or not fn or not all(part.isidentifier() for part in mod.split(".") + [fn]):
        raise StudyError(f"--callback {name}: expected mlflow, wandb or MODULE:FACTORY (a function returning a "
                         "ray.tune.Callback)")


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


def dry_run(study: Study, planned: list[Planned], args: StudyArgs) -> int:
    """List the planned trials (finished ones marked) and what each asks for; no Ray."""
    from .records import done_keys
    from .storage import Storage
    storage = Storage(args.storage)
    exists = not storage.is_local or os.path.isdir(storage.root)
    done = done_keys(storage, study.name, planned) if exists else set()
    if args.gpus_per_trial is not None:
        gpu = f"{args.gpus_per_trial:g}"
    elif args.address:
        gpu = "1 if the cluster has GPUs, else 0"
    else:
        gpu = "1" if planned_device_type(args) == "cuda" else "0"
    print(f"[{study.name}] dry run: {len(planned)} planned on {args.dataset}, {sum(p.key in done for p in planned)} "
          f"finished already (records in {storage.uri}); each asks for {args.cpus_per_trial:g} CPU, {gpu} GPU")
    for p in planned:
        what = "k-means" if p.kind == "kmeans" else f"{p.cfg.epochs} epochs"
        print(f"  {'done' if p.key in done else 'todo'}  {p.key:<19} {(p.row + ' / ' if p.row else '') + p.variant:<28} "
              f"seed {p.cfg.seed:<3} {what}, batch {p.cfg.batch_size}, {p.cfg.precision}, "
              f"cpu {args.cpus_per_trial:g}, gpu {gpu}")
    return 0


def main(study: Study, argv: Sequence[str] | None = None, callbacks: Sequence | None = None) -> int:
    """Entry point of every study script; returns the process exit code. ``callbacks``: extra
    Ray Tune callbacks (``ray.tune.Callback`` objects) added to the study's Tuner."""
    t_start = time.time()
    try:
        args = parse_args(study, argv)
        if args.debug:
            return run_debug(study, args)
        notes: list[str] = []
        planned = plan(study, args.dataset, args.seeds, args.overrides, notes, args.env, planned_device_type(args))
        for n in notes:
            print(f"note: {n}")
        if args.dry_run:
            return dry_run(study, planned, args)
        from .runner.orchestrate import run_study  # Ray is imported only once the input is known to be valid
        return run_study(study, planned, args, callbacks=list(callbacks or ()), t_start=t_start)
    except ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------- search
SEARCH = Study(name="search", title="Hyperparameter search (Optuna TPE under Ray Tune, ASHA)",
               description="Searches the labeler's parameter, lambda, T and the learning rate.",
               variants=(Variant("search", {}),))
OBJECTIVES = ("acc", "label_free")


def search_main(argv: Sequence[str] | None = None, callbacks: Sequence | None = None) -> int:
    """Entry point of ``studies/search.py``."""
    parser = build_parser(SEARCH)
    add_optuna_flags(parser, searcher=False)
    parser.add_argument("--trials", type=int, default=40, help="number of configurations to try in all (default: 40)")
    parser.add_argument("--objective", default="acc", choices=OBJECTIVES,
                        help="acc (default): uses the labels (benchmarks); label_free: augmentation stability x "
                             "cluster balance, usable without labels")
    parser.add_argument("--labeler", choices=LABELERS.names(), help="the labeler searched (default: the dataset's "
                        "preset)")
    parser.add_argument("--max-concurrent", type=int, default=4, help="trials sampled ahead of their results "
                        "(default: 4)")
    parser.add_argument("--sampler-seed", type=int, default=0, help="seed of the sampler (default: 0)")
    parser.add_argument("--no-asha", action="store_true", help="run every trial to the end (no early stopping)")
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
        if args.smoke_test and extra.trials == parser.get_default("trials"):
            extra.trials = 2
        if args.debug:
            return run_debug(Study(name="search", title=SEARCH.title, variants=(Variant("search", over),)), args)
        seeds = args.seeds or [0]
        # ASHA compares the objective at its milestones (and Tune checks that every report
        # carries it): evaluate every epoch
        if over.get("eval_every", 1) != 1 and not extra.no_asha:
            raise StudyError(f"--set eval_every={over['eval_every']}: the search's ASHA compares the objective "
                             f"after every epoch; drop the --set or pass --no-asha")
        base = make_config(args.dataset, **{"eval_every": 1, **over, "seed": seeds[0]})
        from .runner.search import searched_names
        fixed = sorted(set(args.overrides) & searched_names(base))
        if fixed:
            raise StudyError(f"--set {fixed[0]}: {fixed[0]} is searched (the sampler sets it); drop the --set")
        if args.dry_run:
            print(f"[search] dry run: {extra.trials} trials on {args.dataset}, seeds {seeds}"
                  f"{' (each trial runs them in lock-step and reports their mean)' if len(seeds) > 1 else ''}, "
                  f"objective {extra.objective}, sampler {args.sampler}; searched: "
                  f"{', '.join(sorted(searched_names(base)))}; each trial asks for {args.cpus_per_trial:g} CPU, "
                  f"{'auto' if args.gpus_per_trial is None else format(args.gpus_per_trial, 'g')} GPU")
            return 0
        from .runner.search import run_search
        return run_search(base, args, extra.trials, extra.objective, extra.max_concurrent,
                          extra.sampler_seed, asha=not extra.no_asha, seeds=seeds, callbacks=list(callbacks or ()))
    except ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
