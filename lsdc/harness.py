"""The Ray Tune adapter: every Ray (and Optuna) call of lsdc lives in this module.

- :func:`lsdc_trainable`: a function trainable wrapping :class:`~lsdc.trial.Trial`; reports
  every epoch with ``tune.report``, checkpoints every few epochs, resumes from
  ``tune.get_checkpoint()``, and writes the trial's record (atomically) when it ends.
- :func:`run_study`: pretraining stage (one Ray task per distinct backbone), k-means
  baselines (Ray tasks), then the trials under a ``Tuner`` (or ``Tuner.restore`` of the same
  study's interrupted run), with a one-line live progress view.
- :func:`run_search`: an Optuna (TPE) search under Ray Tune with ASHA (see ``studies/search.py``).
"""
from __future__ import annotations

import os

# quiet Ray: the classic (terse) output engine, no checkpoint-sync nagging, no usage stats
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

import functools  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import ray  # noqa: E402
from ray import tune  # noqa: E402

from .config import Env, TrialConfig  # noqa: E402
from .records import finished_keys, kmeans_record, record_path, reuse_records, trial_record  # noqa: E402
from .storage import Storage  # noqa: E402
from .study import Planned, Study, StudyArgs, StudyError  # noqa: E402

REPORT_KEYS = ("epoch", "loss", "bce", "mse", "acc", "nmi", "ari", "confident_frac", "confident_acc", "lr",
               "w_cons", "epoch_s", "train_s", "images_per_s", "stability", "balance", "label_free")


# ------------------------------------------------------------------------------- cluster
def ray_init_kwargs(address: str | None, num_cpus: int | None = None, dashboard: bool = False) -> dict:
    """Arguments of ``ray.init``: a private local cluster without dashboard (or, if asked, a
    dashboard bound to 127.0.0.1 only), or a connection to an existing cluster."""
    common = dict(logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    if address:
        return dict(address=address, **common)
    return dict(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                **common)


def init_ray(address: str | None, num_cpus: int | None = None, dashboard: bool = False) -> float:
    """Start or join Ray (see :func:`ray_init_kwargs`); returns the seconds it took."""
    t0 = time.perf_counter()
    if ray.is_initialized():
        return 0.0
    ray.init(**ray_init_kwargs(address, num_cpus, dashboard))
    return time.perf_counter() - t0


def check_resources(gpus_per_trial: float, cpus_per_trial: float) -> None:
    """Fail at once, instead of waiting forever, if no node can host one trial."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    max_gpu = max((n["Resources"].get("GPU", 0.0) for n in nodes), default=0.0)
    max_cpu = max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0)
    summary = ", ".join(f"{k} {v:g}" for k, v in sorted(total.items()) if k in ("CPU", "GPU"))
    if gpus_per_trial > max_gpu:
        what = "has no GPU" if max_gpu == 0 else f"has at most {max_gpu:g} GPU(s) on one node"
        raise StudyError(f"--gpus-per-trial {gpus_per_trial:g}: the Ray cluster {what} ({summary}); "
                         f"use --gpus-per-trial 0 to run on CPUs")
    if cpus_per_trial > max_cpu:
        raise StudyError(f"--cpus-per-trial {cpus_per_trial:g}: no node has that many CPUs ({summary})")


def default_gpus_per_trial() -> float:
    return 1.0 if ray.cluster_resources().get("GPU", 0.0) > 0 else 0.0


def _set_threads() -> None:
    import torch
    try:
        n = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)) or 1
    except Exception:  # outside a Ray worker
        n = os.cpu_count() or 1
    torch.set_num_threads(max(1, n))


# ------------------------------------------------------------------------ backbones
def ensure_backbone_in_storage(cfg: TrialConfig, env: Env, storage: Storage, log=print) -> str | None:
    """The pretrained backbone of ``cfg`` as a local file, made (once) and kept in the storage."""
    from .pretrain import backbone_path, ensure_backbone
    if cfg.pretrain == "none":
        return None
    if storage.is_local:
        return ensure_backbone(cfg, env, log=log)
    local = backbone_path(cfg, env.cache_dir)
    rel = "backbones/" + os.path.basename(local)
    if not os.path.exists(local) and storage.exists(rel):
        storage.get_file(rel, local)
    path = ensure_backbone(cfg, env, log=log)
    if not storage.exists(rel):
        storage.put_file(path, rel)
    return path


def _pretrain_task(cfg_dict: dict, env_dict: dict, storage_uri: str) -> str:
    _set_threads()
    cfg = TrialConfig.from_dict(cfg_dict)
    return ensure_backbone_in_storage(cfg, Env(**env_dict), Storage(storage_uri), log=lambda s: None)


def _kmeans_task(planned: dict, env_dict: dict, storage_uri: str) -> dict:
    from .pretrain import kmeans_baseline
    from .runtime import resolve_device
    _set_threads()
    cfg = TrialConfig.from_dict(planned["trial"])
    env, storage = Env(**env_dict), Storage(storage_uri)
    ensure_backbone_in_storage(cfg, env, storage, log=lambda s: None)
    res = kmeans_baseline(cfg, env, log=lambda s: None)
    rec = kmeans_record(study=planned["study"], variant=planned["variant"], row=planned["row"], cfg=cfg,
                        result=res, device=resolve_device(cfg.device))
    rec["key"] = planned["key"]
    storage.write_json(record_path(planned["study"], planned["key"]), rec)
    return res


# ------------------------------------------------------------------------- trainable
def lsdc_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one clustering trial, checkpointed and resumable."""
    _tune_trial(config["spec"], Env(**config["env"]), Storage(config["storage"]), config.get("checkpoint_every"))


def _tune_trial(spec: dict, env: Env, storage: Storage, checkpoint_every: int | None,
                objective: str | None = None) -> None:
    from .trial import Trial
    _set_threads()
    cfg = TrialConfig.from_dict(spec["trial"])
    rel = record_path(spec["study"], spec["key"])
    if storage.exists(rel):
        # finished before the driver could register it (a killed driver): never train it again
        rec = storage.read_json(rel)
        last = (rec.get("history") or [{}])[-1]
        metrics = {k: last[k] for k in REPORT_KEYS if isinstance(last.get(k), (int, float))}
        metrics.update(diverged=int(rec["status"] == "diverged"), trial_done=1, trial_key=spec["key"])
        if objective is not None:
            metrics["objective"] = -1.0 if metrics["diverged"] else float(last.get(objective, float("nan")))
        tune.report(metrics)
        return
    t0 = time.perf_counter()
    ensure_backbone_in_storage(cfg, env, storage, log=print)
    trial = Trial(cfg, env, log=print)
    restarts = 0
    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            trial.load(os.path.join(d, "trial.pt"))
            with open(os.path.join(d, "meta.json")) as f:
                restarts = json.load(f)["restarts"] + 1
    setup_s = time.perf_counter() - t0
    every = checkpoint_every or max(1, cfg.epochs // 10)

    def write_record() -> None:
        rec = trial_record(study=spec["study"], variant=spec["variant"], row=spec["row"], cfg=cfg,
                           history=trial.history, status="diverged" if trial.diverged else "finished",
                           confusion=None if trial.diverged else trial.confusions(), device=trial.device,
                           precision=trial.precision, setup_s=setup_s,
                           backbone={"file": os.path.basename(trial.backbone_path or ""), **trial.backbone_meta},
                           restarts=restarts)
        rec["ray_node_id"] = ray.get_runtime_context().get_node_id()
        storage.write_json(rel, rec)

    for m in trial:
        metrics = {k: m[k] for k in REPORT_KEYS if k in m and isinstance(m[k], (int, float))}
        metrics.update(diverged=int(trial.diverged), trial_done=int(trial.done), trial_key=spec["key"])
        if objective is not None:
            # a diverged trial is the worst possible outcome, not a missing one
            metrics["objective"] = -1.0 if trial.diverged else float(m.get(objective, float("nan")))
        if trial.done:
            write_record()  # before the last report: a crash after it loses nothing
        if trial.done or trial.epoch % every == 0:
            with tempfile.TemporaryDirectory() as d:
                trial.save(os.path.join(d, "trial.pt"))
                with open(os.path.join(d, "meta.json"), "w") as f:
                    json.dump({"restarts": restarts, "epoch": trial.epoch, "key": spec["key"]}, f)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)
    if trial.done and not storage.exists(rel):  # restored from the final checkpoint
        write_record()


# -------------------------------------------------------------------------- progress
def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress(tune.Callback):
    """One concise status line: trials done / running / pending, best and latest ACC, ETA.

    Its state is only what was known when the experiment was created (it is pickled with
    the experiment and comes back on restore); everything else is read from ``trials``."""

    def __init__(self, study: str, total: int, done_outside: int, every_s: float = 15.0, quiet: bool = False,
                 epochs: int = 0):
        self.study, self.total, self.done_outside, self.epochs = study, total, done_outside, epochs
        self.every_s, self.quiet = every_s, quiet
        self._last = 0.0
        self._t0: float | None = None
        self._best = float("nan")
        self._latest = ""
        self._iter_s: list[float] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "acc" in result:
            self._best = result["acc"] if not self._best >= result["acc"] else self._best
            name, epochs = self._describe(trial)
            self._latest = f"{result['acc']:.3f} ({name}, ep {result.get('epoch', '?')}/{epochs})"
        if "time_this_iter_s" in result:
            self._iter_s.append(float(result["time_this_iter_s"]))
        if time.time() - self._last >= self.every_s:
            self._print(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(trials)

    def _describe(self, trial) -> tuple[str, int]:
        sp = trial.config.get("spec")
        if sp is None:  # a search trial: its config is the sampled parameters
            return trial.trial_id, self.epochs
        return f"{sp['variant']}/s{sp['trial']['seed']}", sp["trial"]["epochs"]

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trials, note=f"trial {self._describe(trial)[0]} failed (will resume from its checkpoint "
                    f"if retries remain)")

    def line(self, trials) -> str:
        if self._t0 is None:
            self._t0 = time.time()
        st = [t.status for t in trials]
        done = st.count("TERMINATED") + self.done_outside
        running, pending, errored = st.count("RUNNING"), st.count("PENDING"), st.count("ERROR")
        remaining_epochs = 0
        for t in trials:
            if t.status in ("RUNNING", "PENDING"):
                ep = self._describe(t)[1]
                remaining_epochs += ep - int((t.last_result or {}).get("epoch", 0) or 0)
        per_epoch = sum(self._iter_s[-50:]) / len(self._iter_s[-50:]) if self._iter_s else float("nan")
        eta = remaining_epochs * per_epoch / max(running, 1)
        parts = [f"[{self.study}] {done}/{self.total} done", f"{running} running", f"{pending} pending"]
        if errored:
            parts.append(f"{errored} errored")
        acc = "" if math.isnan(self._best) else f" | best acc {self._best:.3f}, latest {self._latest}"
        return ", ".join(parts) + acc + f" | elapsed {_fmt_s(time.time() - self._t0)}, ETA {_fmt_s(eta)}"

    def _print(self, trials, note: str = "") -> None:
        self._last = time.time()
        if not self.quiet:
            print(self.line(trials) + (f" -- {note}" if note else ""), flush=True)


# ---------------------------------------------------------------------------- studies
def experiment_name(study: Study, planned: list[Planned]) -> str:
    """Stable for the same command: the study, dataset and the set of planned trial keys."""
    blob = ",".join(sorted(p.key for p in planned))
    ds = os.path.basename(planned[0].cfg.dataset).replace(".npz", "")
    return f"{study.name}-{ds}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def preflight(planned: list[Planned], args: StudyArgs, storage: Storage) -> None:
    """Everything that can be checked before compute: storage, datasets, cached checkpoints."""
    from . import data as data_mod
    from .models import build_model
    from .pretrain import backbone_path, load_backbone
    storage.check_location()
    for ds in sorted({p.cfg.dataset for p in planned}):
        data_mod.check_available(ds, args.env.data_root, args.env.download)
    seen = set()
    for p in planned:
        path = backbone_path(p.cfg, args.env.cache_dir) if p.cfg.pretrain != "none" else None
        if path and path not in seen and os.path.exists(path):
            seen.add(path)
            load_backbone(build_model(p.cfg).backbone, path, p.cfg)


def run_study(study: Study, planned: list[Planned], args: StudyArgs) -> int:
    """Run a planned study on Ray; returns the process exit code."""
    t_start = time.perf_counter()
    storage = Storage(args.storage)
    preflight(planned, args, storage)            # nothing is written before this passes
    done = finished_keys(storage, study.name) if os.path.isdir(storage.root) or not storage.is_local else set()
    if all(p.key in done for p in planned):
        print(f"[{study.name}] nothing to do: all {len(planned)} planned trials have records. Tables: "
              f"python analysis/make_tables.py --storage {args.storage}")
        return 0
    timings: dict[str, float] = {}
    interrupted = False
    try:
        timings["ray_init"] = init_ray(args.address, dashboard=args.dashboard)
        gpus = default_gpus_per_trial() if args.gpus_per_trial is None else args.gpus_per_trial
        check_resources(gpus, args.cpus_per_trial)   # fails in seconds instead of waiting forever
        storage.check_writable()
        ds = os.path.basename(planned[0].cfg.dataset).replace(".npz", "")
        storage.write_json(f"{study.name}/plans/{ds}.json", {
            "study": study.name, "title": study.title, "dataset": planned[0].cfg.dataset,
            "trials": [{"key": p.key, "variant": p.variant, "row": p.row, "kind": p.kind, "seed": p.cfg.seed}
                       for p in planned]})
        reused = reuse_records(storage, study.name, planned)
        done = finished_keys(storage, study.name)
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
                                  {"cpu": args.cpus_per_trial, "gpu": gpus}) if trials else False
        timings["trials"] = time.perf_counter() - t0
    except KeyboardInterrupt:
        interrupted = True
        print(f"[{study.name}] interrupted (Ctrl-C): stopping", flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    done = finished_keys(storage, study.name)
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


def _remote(fn: Callable, res: dict[str, float]):
    return ray.remote(num_cpus=res["num_cpus"], num_gpus=res["num_gpus"], max_retries=2)(fn)


def _run_pretraining(study: Study, pending: list[Planned], args: StudyArgs, storage: Storage, res) -> None:
    from .pretrain import backbone_key, backbone_path
    distinct: dict[str, Planned] = {}
    for p in pending:
        if p.cfg.pretrain != "none":
            distinct.setdefault(backbone_key(p.cfg), p)
    todo = {k: p for k, p in distinct.items()
            if not (os.path.exists(backbone_path(p.cfg, args.env.cache_dir))
                    or (not storage.is_local and storage.exists("backbones/" + os.path.basename(
                        backbone_path(p.cfg, args.env.cache_dir)))))}
    if not todo:
        return
    print(f"[{study.name}] pretraining {len(todo)} backbone(s) ({', '.join(sorted({p.cfg.pretrain for p in todo.values()}))})"
          f", one Ray task each", flush=True)
    task = _remote(_pretrain_task, res)
    refs = [task.remote(p.cfg.to_dict(), args.env.to_dict(), storage.uri) for p in todo.values()]
    t0 = time.perf_counter()
    while refs:
        ready, refs = ray.wait(refs, num_returns=1)
        ray.get(ready)
        print(f"[{study.name}] pretraining: {len(todo) - len(refs)}/{len(todo)} backbones ready "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


def _run_kmeans(study: Study, jobs: list[Planned], args: StudyArgs, storage: Storage, res) -> None:
    if not jobs:
        return
    task = _remote(_kmeans_task, res)
    refs = [task.remote(p.to_dict(), args.env.to_dict(), storage.uri) for p in jobs]
    ray.get(refs)
    print(f"[{study.name}] k-means baselines: {len(jobs)} done", flush=True)


def _run_trials(study: Study, planned: list[Planned], trials: list[Planned], done_outside: int, args: StudyArgs,
                storage: Storage, resources: dict[str, float]) -> bool:
    """Run (or resume) the trials under Ray Tune; True if the run was interrupted."""
    name = experiment_name(study, planned)
    exp_path = storage.uri_of(study.name, "tune", name)
    trainable = tune.with_resources(lsdc_trainable, resources)
    if tune.Tuner.can_restore(exp_path):
        print(f"[{study.name}] resuming Ray Tune experiment {exp_path}", flush=True)
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if args.resume:
            print(f"[{study.name}] --resume: no interrupted run of this study in the storage; starting it")
        space = {"spec": tune.grid_search([p.to_dict() for p in trials]), "env": args.env.to_dict(),
                 "storage": storage.uri, "checkpoint_every": args.checkpoint_every}
        progress = Progress(study.name, len(planned), done_outside, quiet=args.quiet)
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(reuse_actors=True, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                storage_path=storage.uri_of(study.name, "tune"), name=name, verbose=0, callbacks=[progress],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                failure_config=tune.FailureConfig(max_failures=args.max_failures)))
    results = tuner.fit()
    for r in results:
        if r.error is not None:
            sp = r.config["spec"] if r.config else {}
            first = str(r.error).strip().splitlines()
            print(f"[{study.name}] trial {sp.get('variant')}/s{sp.get('trial', {}).get('seed')} failed: "
                  f"{first[-1] if first else r.error}", flush=True)
    finished = finished_keys(storage, study.name)
    _prune_checkpoints(results, finished, storage)
    unfinished = [p for p in trials if p.key not in finished]
    errored = sum(r.error is not None for r in results)
    return bool(unfinished) and errored < len(unfinished)


def _prune_checkpoints(results, finished: set[str], storage: Storage) -> None:
    """Drop the checkpoints of trials whose record is written: they are never resumed."""
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


# ----------------------------------------------------------------------------- search
SEARCHED = ("knn_k", "cosine_tau", "sne_tau", "sne_temperature", "lam", "rampup", "lr")


def search_space(trial, base: dict) -> None:
    """Optuna define-by-run space: the labeler's parameter(s), lambda, T and the learning rate."""
    labeler, bs, epochs = base["labeler"], base["batch_size"], base["epochs"]
    if labeler == "knn":
        trial.suggest_int("knn_k", 3, max(3, min(50, bs - 1)))
    elif labeler == "cosine":
        trial.suggest_float("cosine_tau", 0.5, 0.99)
    else:
        trial.suggest_float("sne_tau", 1e-3, 0.2, log=True)
        trial.suggest_float("sne_temperature", 0.1, 10.0, log=True)
    trial.suggest_float("lam", 0.5, 50.0, log=True)
    trial.suggest_int("rampup", 0, epochs)
    lo, hi = (1e-4, 1e-2) if base["optimizer"] == "adam" else (1e-3, 0.5)
    trial.suggest_float("lr", lo, hi, log=True)


def search_trainable(config: dict[str, Any], fixed: dict[str, Any]) -> None:
    params = {k: config[k] for k in SEARCHED if k in config}
    cfg = TrialConfig.from_dict({**fixed["base"], **params})
    spec = {"study": "search", "variant": fixed["name"], "row": "", "key": cfg.key(), "trial": cfg.to_dict()}
    _tune_trial(spec, Env(**fixed["env"]), Storage(fixed["storage"]), fixed.get("checkpoint_every"),
                objective=fixed["objective"])


def run_search(base: TrialConfig, args: StudyArgs, n_trials: int, objective: str, max_concurrent: int,
               sampler_seed: int, asha: bool = True) -> int:
    """Optuna TPE (seeded) under Ray Tune, ASHA on the per-epoch objective, Optuna state in a
    journal file in the storage (safe with concurrent workers, resumable)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    storage = Storage(args.storage)
    if not storage.is_local:
        raise StudyError("--storage: the search keeps Optuna's journal in a file, so it needs a local or shared "
                         f"folder, not {args.storage!r}")
    storage.check_location()
    from . import data as data_mod
    data_mod.check_available(base.dataset, args.env.data_root, args.env.download)
    ds = os.path.basename(base.dataset).replace(".npz", "")
    bkey = {k: v for k, v in base.to_dict().items() if k not in SEARCHED}
    tag = hashlib.sha256(json.dumps(bkey, sort_keys=True).encode()).hexdigest()[:8]
    name = f"search-{ds}-{base.labeler}-{objective}-{tag}"
    t_start = time.perf_counter()
    interrupted = False
    try:
        init_ray(args.address, dashboard=args.dashboard)
        gpus = default_gpus_per_trial() if args.gpus_per_trial is None else args.gpus_per_trial
        check_resources(gpus, args.cpus_per_trial)   # before anything is written
        storage.check_writable()
        os.makedirs(storage.path("search"), exist_ok=True)
        journal = JournalStorage(JournalFileBackend(storage.path("search", f"{name}.journal")))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=name, storage=journal, direction="maximize", load_if_exists=True)
        done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        print(f"[search] {name}: objective {objective}, {done}/{n_trials} trials done, journal "
              f"{storage.path('search', name + '.journal')}", flush=True)
        fixed = {"base": base.to_dict(), "env": args.env.to_dict(), "storage": storage.uri, "name": name,
                 "objective": objective, "checkpoint_every": args.checkpoint_every}
        trainable = tune.with_resources(tune.with_parameters(search_trainable, fixed=fixed),
                                        {"cpu": args.cpus_per_trial, "gpu": gpus})
        if base.pretrain != "none":
            ray.get(_remote(_pretrain_task, {"num_cpus": args.cpus_per_trial, "num_gpus": gpus}).remote(
                base.to_dict(), args.env.to_dict(), storage.uri))
        while not interrupted:
            states = [t.state for t in study.trials]
            done = states.count(optuna.trial.TrialState.COMPLETE)
            runs = sorted(int(d.rsplit("-r", 1)[1]) for d in storage.list_dirs("search/tune")
                          if d.startswith(name + "-r") and d.rsplit("-r", 1)[1].isdigit())
            last = storage.uri_of("search", "tune", f"{name}-r{runs[-1]}") if runs else None
            resume = last is not None and optuna.trial.TrialState.RUNNING in states and tune.Tuner.can_restore(last)
            if done >= n_trials and not resume:
                break
            if resume:
                print(f"[search] resuming the interrupted Ray Tune experiment {last}", flush=True)
                tuner = tune.Tuner.restore(last, trainable=trainable, resume_unfinished=True, resume_errored=True)
            else:
                run = f"{name}-r{(runs[-1] + 1) if runs else 1}"
                searcher = OptunaSearch(space=functools.partial(search_space, base=fixed["base"]),
                                        metric="objective", mode="max",
                                        sampler=optuna.samplers.TPESampler(seed=sampler_seed + len(runs)),
                                        storage=journal, study_name=name)
                scheduler = ASHAScheduler(time_attr="training_iteration", max_t=base.epochs,
                                          grace_period=max(1, base.epochs // 4), reduction_factor=3) \
                    if asha else FIFOScheduler()
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        metric="objective", mode="max", num_samples=n_trials - done, scheduler=scheduler,
                        search_alg=ConcurrencyLimiter(searcher, max_concurrent=max_concurrent), reuse_actors=True),
                    run_config=tune.RunConfig(
                        storage_path=storage.uri_of("search", "tune"), name=run, verbose=0,
                        callbacks=[Progress("search", n_trials, done, quiet=args.quiet, epochs=base.epochs)],
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                        failure_config=tune.FailureConfig(max_failures=args.max_failures)))
            results = tuner.fit()
            _merge_search_results(storage, name, results, base)
            errors = [r for r in results if r.error is not None]
            now = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
            if errors or now == done:   # failures (reported above) or no progress: stop here
                interrupted = now < n_trials and not errors
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if ray.is_initialized():
            ray.shutdown()
    summary = _summarise_search(storage, name, objective, base, journal)
    print(f"[search] wall {time.perf_counter() - t_start:.1f} s; best of {summary['n_trials']} trials "
          f"({summary['n_pruned']} stopped early by ASHA): objective {summary['best']['objective']:.4f}, "
          f"ACC {summary['best']['acc']:.4f}", flush=True)
    print("[search] best configuration: " + json.dumps(summary["best"]["params"]), flush=True)
    print(f"[search] Spearman rank correlation of {objective} with ACC over the trials: "
          f"{summary['spearman_vs_acc']}", flush=True)
    print(f"[search] written {storage.path('search', 'best-' + name + '.json')}", flush=True)
    return 130 if interrupted else 0


def _merge_search_results(storage: Storage, name: str, results, base: TrialConfig) -> None:
    rel = f"search/{name}-trials.json"
    table = storage.read_json(rel) if storage.exists(rel) else {}
    for r in results:
        m = r.metrics or {}
        if not m or r.config is None:
            continue
        params = {k: r.config[k] for k in SEARCHED if k in r.config}
        key = m.get("trial_key") or json.dumps(params, sort_keys=True)
        table[key] = {"params": params, "objective": m.get("objective"), "acc": m.get("acc"),
                      "label_free": m.get("label_free"), "epochs_run": m.get("epoch"),
                      "complete": bool(m.get("trial_done")), "diverged": bool(m.get("diverged")),
                      "error": None if r.error is None else str(r.error).strip().splitlines()[-1][:300]}
    storage.write_json(rel, table)


def _summarise_search(storage: Storage, name: str, objective: str, base: TrialConfig, journal) -> dict:
    from scipy.stats import spearmanr
    rel = f"search/{name}-trials.json"
    table = storage.read_json(rel) if storage.exists(rel) else {}
    rows = [t for t in table.values() if t.get("objective") is not None]
    rows.sort(key=lambda t: (-(t["objective"] if math.isfinite(t["objective"]) else -math.inf)))
    pairs = [(t["objective"], t["acc"]) for t in rows if t.get("acc") is not None and not t["diverged"]]
    rho = None
    if len(pairs) >= 3:
        rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
        rho = None if rho is None or not math.isfinite(rho) else round(float(rho), 3)
    top = [{"rank": i + 1, **t} for i, t in enumerate(rows[:10])]
    best = top[0] if top else {"objective": float("nan"), "acc": float("nan"), "params": {}}
    summary = {"study": name, "dataset": base.dataset, "objective": objective, "n_trials": len(rows),
               "n_pruned": sum(not t["complete"] for t in rows), "spearman_vs_acc": rho,
               "best": best, "best_config": {**base.to_dict(), **best.get("params", {})}, "top": top}
    storage.write_json(f"search/best-{name}.json", summary)
    return summary


# -------------------------------------------------------------------------- benchmark
class _BenchTrial:
    """One trial's training step in its own Ray worker (for lsdc.bench's ray-N variants)."""

    def __init__(self, cfg_dict: dict, env_dict: dict, warmup: int):
        import torch

        from .trial import Trial
        _set_threads()
        self.trial = Trial(TrialConfig.from_dict(cfg_dict), Env(**env_dict), log=lambda s: None)
        self.gen = torch.Generator(device=self.trial.device).manual_seed(0)
        for _ in range(warmup):
            self._step()
        self._sync()

    def _sync(self) -> None:
        import torch
        if self.trial.device.type == "cuda":
            torch.cuda.synchronize(self.trial.device)

    def _step(self) -> None:
        import torch
        bs = self.trial.cfg.batch_size
        idx = torch.randint(0, len(self.trial.x), (bs,), generator=self.gen, device=self.trial.device)
        self.trial.train_step(self.trial.x[idx], 1.0)

    def ready(self) -> bool:
        return True

    def run(self, steps: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        for _ in range(steps):
            self._step()
        self._sync()
        return steps * self.trial.cfg.batch_size, time.perf_counter() - t0


def bench_concurrent(n: int, cfg_dict: dict, env_dict: dict, warmup: int, steps: int, gpus_per_trial: float,
                     cpus_per_trial: float) -> dict:
    """N trials stepping at the same time (fractional GPUs): aggregate images over the wall time."""
    init_ray(None)
    check_resources(gpus_per_trial, cpus_per_trial)
    actor = ray.remote(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial)(_BenchTrial)
    actors = [actor.remote(cfg_dict, env_dict, warmup) for _ in range(n)]
    try:
        ray.get([a.ready.remote() for a in actors])          # all built and warmed up
        t0 = time.perf_counter()
        outs = ray.get([a.run.remote(steps) for a in actors])
        wall = time.perf_counter() - t0
    finally:
        for a in actors:
            ray.kill(a)
    return {"seconds": wall, "images": sum(o[0] for o in outs), "steps": steps * n, "flops_per_step": None,
            "peak_mem_gb": None, "per_trial_images_per_s": [o[0] / o[1] for o in outs]}


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
