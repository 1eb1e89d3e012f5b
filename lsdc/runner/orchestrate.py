"""A planned study end to end on Ray: backbones (one Ray task each), k-means baselines (Ray
tasks), then the trials under a ``Tuner``, with the live progress view.

Resuming never reads Ray Tune's pickled state (``tuner.pkl``, experiment state): each run is a
new Tune experiment (``<name>-r<N>``) of the trials without a verified record, and each trial
continues from lsdc's own checkpoint in the storage (JSON + weights-only tensors), see
:mod:`lsdc.runner.trainable`."""
from __future__ import annotations

import hashlib
import os
import time

import ray
from ray import tune

from ..planning import Planned, Study, StudyArgs, dataset_tag
from ..records import done_keys, quarantine, reuse_records
from ..storage import Storage, active_hooks
from .callbacks import make_callbacks
from .cluster import RayHandle, check_resources, default_gpus_per_trial, ray_env, remote
from .progress import Progress
from .tasks import backbone_ready, kmeans_task, pretrain_task
from .trainable import lsdc_trainable


def experiment_name(study: Study, planned: list[Planned]) -> str:
    """Stable for the same command: the study, dataset and the set of planned trial keys."""
    blob = ",".join(sorted(p.key for p in planned))
    return f"{study.name}-{dataset_tag(planned[0].cfg.dataset)}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def preflight(planned: list[Planned], args: StudyArgs, storage: Storage) -> None:
    """Everything that can be checked before compute: storage, cached checkpoints (the data
    was loaded and fingerprinted by planning). A cached backbone that does not load or is not
    the trial's is moved aside with a warning (and pretrained again), never fatal."""
    from ..pretrain import backbone_path, cached_backbone_ok
    storage.check_location()
    seen = set()
    for p in planned:
        path = backbone_path(p.cfg, args.env.cache_dir, p.fingerprint) if p.cfg.pretrain != "none" else None
        if path and path not in seen and os.path.exists(path):
            seen.add(path)
            cached_backbone_ok(path, p.cfg, p.fingerprint, log=print)


def worker_env(args: StudyArgs) -> dict[str, str]:
    """Environment for this run's Ray workers: the plugin modules that register entries, the
    CPU convolution kernel choice (``LSDC_CPU_CONV_WGRAD``) and lsdc's test hooks where the
    driver has them set."""
    from ..models import CPU_WGRAD_ENV
    names = [*args.plugins, *[n for n in os.environ.get("LSDC_PLUGINS", "").split(",") if n.strip()]]
    env = {"LSDC_PLUGINS": ",".join(dict.fromkeys(names))} if names else {}
    if os.environ.get(CPU_WGRAD_ENV):
        env[CPU_WGRAD_ENV] = os.environ[CPU_WGRAD_ENV]
    env.update(active_hooks())
    return env


def run_study(study: Study, planned: list[Planned], args: StudyArgs, callbacks: list | None = None,
              t_start: float | None = None) -> int:
    """Run a planned study on Ray; returns the process exit code. ``callbacks``: extra Ray Tune
    callbacks for the study's Tuner; ``t_start``: when the command started (``time.time()``)."""
    with ray_env():
        return _run_study(study, planned, args, list(callbacks or ()), t_start)


def _run_study(study: Study, planned: list[Planned], args: StudyArgs, callbacks: list | None = None,
               t_wall: float | None = None) -> int:
    t_start = time.perf_counter()
    t_wall = time.time() if t_wall is None else t_wall
    storage = Storage(args.storage)
    preflight(planned, args, storage)            # nothing is written before this passes
    exists = os.path.isdir(storage.root) or not storage.is_local
    bad: dict[str, str] = {}
    done = done_keys(storage, study.name, planned, bad) if exists else set()
    if all(p.key in done for p in planned):
        print(f"[{study.name}] nothing to do: all {len(planned)} planned trials have records. Tables: "
              f"python analysis/make_tables.py --storage {args.storage}")
        return 0
    timings: dict[str, float] = {}
    interrupted = False
    handle = None
    try:
        handle = RayHandle(args.address, dashboard=args.dashboard, env_vars=worker_env(args))
        timings["ray_init"] = handle.seconds
        gpus = default_gpus_per_trial() if args.gpus_per_trial is None else args.gpus_per_trial
        check_resources(gpus, args.cpus_per_trial)   # fails in seconds instead of waiting forever
        check_cluster_device(planned[0].cfg.device)
        storage.check_writable()
        quarantine(storage, study.name, bad=bad)        # the records found bad above: not verified again
        storage.write_json(f"{study.name}/plans/{dataset_tag(planned[0].cfg.dataset)}.json", {
            "study": study.name, "title": study.title, "dataset": planned[0].cfg.dataset,
            "trials": [{"key": p.key, "variant": p.variant, "row": p.row, "kind": p.kind, "seed": p.cfg.seed,
                        "fingerprint": p.fingerprint} for p in planned]})
        reused = reuse_records(storage, study.name, planned, done)
        done = done_keys(storage, study.name, planned)
        pending = [p for p in planned if p.key not in done]
        print(f"[{study.name}] {len(planned)} planned on {planned[0].cfg.dataset}: {len(planned) - len(pending)} "
              f"finished already{f' ({reused} reused from other studies)' if reused else ''}, {len(pending)} to "
              f"run; storage {storage.uri}", flush=True)
        res = {"num_cpus": args.cpus_per_trial, "num_gpus": gpus}
        t0 = time.perf_counter()
        _run_pretraining(study, pending, args, storage, res)
        timings["pretraining"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _run_kmeans(study, [p for p in pending if p.kind == "kmeans"], args, storage, res)
        timings["kmeans"] = time.perf_counter() - t0
        trials = [p for p in pending if p.kind == "trial"]
        t0 = time.perf_counter()
        interrupted = _run_trials(study, planned, trials, len(planned) - len(trials), args, storage,
                                  {"cpu": args.cpus_per_trial, "gpu": gpus}, callbacks or [], t_wall) \
            if trials else False
        timings["trials"] = time.perf_counter() - t0
    except KeyboardInterrupt:
        interrupted = True
        print(f"[{study.name}] interrupted (Ctrl-C): stopping", flush=True)
    finally:
        if handle is not None:
            handle.close()
    done = done_keys(storage, study.name, planned)
    missing = [p for p in planned if p.key not in done]
    total = time.perf_counter() - t_start
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in timings.items())
    print(f"[{study.name}] {len(planned) - len(missing)}/{len(planned)} trials have records; wall {total:.1f} s "
          f"({parts})")
    if missing:
        how = "interrupted" if interrupted else "unfinished (see the errors above)"
        print(f"[{study.name}] {len(missing)} trial(s) {how}. Resume with the same command (or add --resume): "
              f"finished trials are kept, unfinished ones continue from their last checkpoint.")
        return 130 if interrupted else 1
    print(f"[{study.name}] done. Tables: python analysis/make_tables.py --storage {args.storage}")
    return 0


def check_cluster_device(device: str) -> None:
    """A CUDA device asked for with --set device must exist on the cluster's nodes."""
    from ..planning import StudyError
    if device and device.startswith("cuda") and ray.cluster_resources().get("GPU", 0.0) <= 0:
        raise StudyError(f"--set device={device}: the Ray cluster has no GPU; use --set device=cpu (or auto)")


def next_run_name(storage: Storage, study: str, name: str) -> str:
    """A new Tune experiment folder for this run: ``<name>-r<N>``, N one more than any there."""
    runs = [d.rsplit("-r", 1)[1] for d in storage.list_dirs(f"{study}/tune") if d.startswith(name + "-r")]
    n = max((int(r) for r in runs if r.isdigit()), default=0)
    return f"{name}-r{n + 1}"


def _run_pretraining(study: Study, pending: list[Planned], args: StudyArgs, storage: Storage, res) -> None:
    from ..pretrain import backbone_key
    distinct: dict[str, Planned] = {}
    for p in pending:
        if p.cfg.pretrain != "none":
            distinct.setdefault(backbone_key(p.cfg, p.fingerprint), p)
    todo = {k: p for k, p in distinct.items() if not backbone_ready(p, args.env, storage)}
    if not todo:
        return
    cpus = pretrain_cpus(res["num_cpus"], res["num_gpus"], len(todo))
    print(f"[{study.name}] pretraining {len(todo)} backbone(s) ({', '.join(sorted({p.cfg.pretrain for p in todo.values()}))})"
          f", one Ray task each" + (f" on {cpus:g} CPUs" if cpus != res["num_cpus"] else ""), flush=True)
    task = remote(pretrain_task, cpus, res["num_gpus"])
    refs = [task.remote(p.to_dict(), args.env.to_dict(), storage.uri, active_hooks()) for p in todo.values()]
    t0 = time.perf_counter()
    while refs:
        ready, refs = ray.wait(refs, num_returns=1)
        ray.get(ready)
        print(f"[{study.name}] pretraining: {len(todo) - len(refs)}/{len(todo)} backbones ready "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


def pretrain_cpus(cpus_per_trial: float, gpus: float, backbones: int) -> float:
    """CPUs for each pretraining task. The trials wait for every backbone, so on a cluster
    without GPUs the backbones share its free CPUs instead of leaving all but
    ``cpus_per_trial`` of them idle: the largest equal share for which the nodes can run every
    task at once (never less than a trial's request); with GPUs, the trial's own request."""
    if gpus or backbones < 1:
        return cpus_per_trial
    nodes = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    c = int(min(sum(nodes), ray.available_resources().get("CPU", 0)) // backbones)
    while c > cpus_per_trial and sum(n // c for n in nodes) < backbones:
        c -= 1
    return max(cpus_per_trial, c)


def _run_kmeans(study: Study, jobs: list[Planned], args: StudyArgs, storage: Storage, res) -> None:
    if not jobs:
        return
    task = remote(kmeans_task, res["num_cpus"], res["num_gpus"])
    refs = [task.remote(p.to_dict(), args.env.to_dict(), storage.uri, active_hooks()) for p in jobs]
    ray.get(refs)
    print(f"[{study.name}] k-means baselines: {len(jobs)} done", flush=True)


def _run_trials(study: Study, planned: list[Planned], trials: list[Planned], done_outside: int, args: StudyArgs,
                storage: Storage, resources: dict[str, float], callbacks: list | None = None,
                t_wall: float | None = None) -> bool:
    """Run (or resume) the trials under Ray Tune; True if the run was interrupted."""
    name = next_run_name(storage, study.name, experiment_name(study, planned))
    trainable = tune.with_resources(lsdc_trainable, resources)
    resumable = [p for p in trials if storage.exists(f"{study.name}/checkpoints/{p.key}/meta.json")]
    if resumable:
        print(f"[{study.name}] resuming: {len(resumable)} trial(s) continue from their lsdc checkpoints "
              f"(Ray Tune's pickled state is never restored)", flush=True)
    elif args.resume:
        print(f"[{study.name}] --resume: no interrupted trial of this study in the storage; starting it")
    hooks = active_hooks()          # lsdc's test hooks, sent with each trial (lsdc.storage.hooks_applied)
    common = {"env": args.env.to_dict(), "storage": storage.uri, "checkpoint_every": args.checkpoint_every,
              "plugins": list(args.plugins), **({"hooks": hooks} if hooks else {})}
    progress = Progress(study.name, len(planned), done_outside, quiet=args.quiet, t_start=t_wall)
    if args.searcher == "optuna":
        space, searcher = None, _grid_searcher(study, planned, trials, common, args, storage)
        print(f"[{study.name}] --searcher optuna: the grid through Optuna's GridSampler, study "
              f"{searcher.study_name} in {searcher.storage_desc}", flush=True)
    else:
        space, searcher = {"spec": tune.grid_search([p.to_dict() for p in trials]), **common}, None
    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(reuse_actors=True, trial_name_creator=_trial_name,
                                    trial_dirname_creator=_trial_name, search_alg=searcher,
                                    num_samples=len(trials) if searcher else 1,
                                    metric="acc" if searcher else None, mode="max" if searcher else None),
        run_config=tune.RunConfig(
            storage_path=storage.uri_of(study.name, "tune"), name=name, verbose=0,
            callbacks=[progress, *make_callbacks(args.callbacks, f"lsdc-{name}"), *(callbacks or [])],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=args.max_failures)))
    results = tuner.fit()
    for r in results:
        if r.error is not None:
            sp = r.config["spec"] if r.config else {}
            first = str(r.error).strip().splitlines()
            print(f"[{study.name}] trial {sp.get('variant')}/s{sp.get('trial', {}).get('seed')} failed: "
                  f"{first[-1] if first else r.error}; full traceback: {os.path.join(r.path or '', 'error.txt')}",
                  flush=True)
    refused: dict[str, str] = {}              # key -> why, for the records that fail verification
    finished = done_keys(storage, study.name, trials, refused)
    _prune_checkpoints(results, finished, storage)
    unfinished = [p for p in trials if p.key not in finished]
    failed = {(r.config or {}).get("spec", {}).get("key") for r in results if r.error is not None}
    for p in unfinished:   # a record written but refused on reading: a failure, named, not an interruption
        if p.key not in failed and p.key in refused:
            failed.add(p.key)
            print(f"[{study.name}] trial {p.variant}/s{p.cfg.seed} wrote a record that fails verification: "
                  f"{refused[p.key]}", flush=True)
    return bool(unfinished) and len(failed & {p.key for p in unfinished}) < len(unfinished)


def _grid_searcher(study: Study, planned: list[Planned], trials: list[Planned], common: dict, args: StudyArgs,
                   storage: Storage):
    """The study's grid (its pending trials) through Optuna's GridSampler: one Optuna trial per
    planned trial, parameter ``trial`` (its key), the rest of its config as constants; the Optuna
    study holds ACC, NMI, ARI, loss and the label-free score as user attributes."""
    import functools
    import optuna
    from .search import UserAttrOptunaSearch, optuna_storage
    specs = {p.key: p.to_dict() for p in trials}
    keys = sorted(specs)
    name = f"{experiment_name(study, planned)}-grid"
    default = storage.path(study.name, "optuna", f"{name}.journal") if storage.is_local else None
    if default is None and not args.optuna_storage:
        from ..planning import StudyError
        raise StudyError("--searcher optuna on a remote --storage needs --optuna-storage URL")
    ostore = optuna_storage(args.optuna_storage, default)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = UserAttrOptunaSearch(space=functools.partial(_grid_space, keys=keys, specs=specs, common=common),
                                    metric="acc", mode="max",
                                    sampler=optuna.samplers.GridSampler({"trial": keys}, seed=0),
                                    storage=ostore, study_name=name)
    searcher.study_name, searcher.storage_desc = name, args.optuna_storage or default
    return searcher


def _grid_space(trial, keys: list[str], specs: dict, common: dict) -> dict:
    key = trial.suggest_categorical("trial", keys)
    return {"spec": specs[key], **common}


def _prune_checkpoints(results, finished: set[str], storage: Storage) -> None:
    """Drop the checkpoints of trials whose record is written: they are never resumed (the
    record is the result; Tune's own result files stay for TensorBoard and ExperimentAnalysis)."""
    import pyarrow.fs as pafs
    for r in results:
        key = (r.config or {}).get("spec", {}).get("key")
        if key not in finished or not r.path:
            continue
        try:
            infos = storage.fs.get_file_info(pafs.FileSelector(r.path, allow_not_found=True))
            for info in infos:
                if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
                    storage.fs.delete_dir(info.path)
        except OSError:
            pass


def _trial_name(trial) -> str:
    sp = trial.config["spec"]
    return f"{sp['variant']}-s{sp['trial']['seed']}-{sp['key'][:8]}".replace("/", "_").replace(" ", "_")
