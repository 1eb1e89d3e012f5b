"""The Optuna search under Ray Tune: a sampler (TPE by default, seeded) proposes configurations
of the registered search space, ASHA stops poor trials on their per-epoch objective, and Optuna's
state lives in a journal file in the storage (safe with concurrent workers, resumable) or in the
database that ``--optuna-storage`` names. ACC, NMI, ARI, loss and the label-free score of each
trial are stored as the Optuna trial's user attributes. With several seeds, each Optuna trial
runs them in lock-step and reports their mean (one record per seed).

Resuming reads only Optuna's storage: a torn or corrupt journal line is cut off (the file is
kept beside it), trials left RUNNING by a killed search are marked FAIL, and a new Tune run
(``<name>-r<N>``) samples the remaining trials. Ray Tune's pickled state is never restored.
Checkpoints of search trials are removed once their Tune run ends (a search trial is never
resumed: the sampler proposes a new one)."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from typing import Any

import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from .. import data as data_mod
from ..config import SEARCH_CORE, Env, TrialConfig, settable_names
from ..planning import Planned, StudyArgs, StudyError, resolve
from ..registry import load_plugins
from ..storage import Storage, active_hooks, hooks_applied
from .callbacks import make_callbacks
from .cluster import RayHandle, check_resources, default_gpus_per_trial, ray_env, remote
from .progress import Progress
from .tasks import pretrain_task
from .trainable import run_tune_trial


def searched_params(base: dict) -> list:
    """The searched parameters: lambda, T and the learning rate, and every parameter of the
    chosen labeler, mixing, pretraining method and head that declares a search space."""
    from ..config import FAMILY_FIELDS
    from ..registry import FAMILIES
    params = list(SEARCH_CORE)
    for fam in FAMILY_FIELDS:
        params += [p for p in FAMILIES[fam].get(base[fam]).params if p.search is not None]
    return params


def searched_names(base: TrialConfig) -> set[str]:
    """The names of the parameters the search sets (a ``--set`` on one of them is refused)."""
    return {p.name for p in searched_params(base.to_dict()) if p.search_space(base.to_dict()) is not None}


USER_ATTRS = ("acc", "nmi", "ari", "loss", "label_free", "epoch")


class UserAttrOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch that also stores each trial's last ACC, NMI, ARI, loss, label-free
    score and epoch as user attributes of the Optuna trial (before it is told its value), so
    ``study.trials_dataframe()`` and optuna-dashboard show them."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and result and trial_id not in self._completed_trials:
            for k in USER_ATTRS:
                v = result.get(k)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    ot_trial.set_user_attr(k, float(v))
            if result.get("trial_key"):
                ot_trial.set_user_attr("trial_key", str(result["trial_key"]))
        super().on_trial_complete(trial_id, result, error)


def optuna_storage(url: str | None, default_journal: str):
    """An Optuna storage: ``sqlite:///...`` and other RDB URLs through RDBStorage, else a
    journal file (``url`` as a path, or ``default_journal``)."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend
    if url and "://" in url:
        try:
            return RDBStorage(url)
        except Exception as e:  # a bad URL, a missing driver, an unreachable server
            raise StudyError(f"--optuna-storage {url}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    path = os.path.abspath(url or default_journal)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return JournalStorage(JournalFileBackend(path))


def make_sampler(name: str, seed: int):
    """Optuna's sampler by name; the search space is all floats and ints, which each fits."""
    import optuna
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise StudyError("--sampler cmaes: needs the cmaes package; pip install cmaes") from None
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise StudyError(f"--sampler {name}: unknown; allowed: tpe, random, cmaes, gp")


def search_space(trial, base: dict) -> None:
    """Optuna define-by-run space, read from the registries (see :func:`searched_params`)."""
    for p in searched_params(base):
        space = p.search_space(base)
        if space is None:
            continue
        kind, lo, hi, log = space
        if kind == "int":
            trial.suggest_int(p.name, int(lo), int(hi), log=log)
        else:
            trial.suggest_float(p.name, float(lo), float(hi), log=log)


def search_trainable(config: dict[str, Any], fixed: dict[str, Any]) -> None:
    """One search trial: the base config with every sampled parameter (none is dropped)."""
    load_plugins(fixed.get("plugins") or ())
    names = set(settable_names())
    unknown = sorted(k for k in config if k not in names)
    if unknown:
        raise ValueError(f"search: sampled parameter {unknown[0]!r} is not a config field or registered parameter")
    cfg = TrialConfig.from_dict({**fixed["base"], **config})
    seeds = fixed.get("seeds") or [cfg.seed]
    ps = [Planned("search", fixed["name"], "", "trial", cfg.replace(seed=s), fixed["fingerprint"], fixed["device_type"])
          for s in seeds]
    with hooks_applied(fixed.get("hooks")):
        if len(ps) == 1:
            run_tune_trial(ps[0], Env(**fixed["env"]), Storage(fixed["storage"]), fixed.get("checkpoint_every"),
                           objective=fixed["objective"])
        else:
            run_seed_group(ps, Env(**fixed["env"]), Storage(fixed["storage"]), fixed.get("checkpoint_every"),
                           objective=fixed["objective"])


MEAN_KEYS = ("loss", "acc", "nmi", "ari", "label_free", "stability", "balance", "confident_frac", "confident_acc")


def run_seed_group(ps: list[Planned], env: Env, storage: Storage, checkpoint_every: int | None,
                   objective: str) -> None:
    """The same configuration with several seeds, in lock-step in one Tune trial: every epoch
    reports the mean over the seeds (what ASHA and Optuna see), with ``<metric>_s<seed>`` beside
    it; checkpoints hold every seed's state; one record per seed when it ends."""
    import tempfile
    from ..records import record_path, trial_record
    from ..trial import Trial
    from .cluster import set_threads
    from .tasks import ensure_backbone_in_storage
    set_threads()
    ensure_backbone_in_storage(ps[0].cfg, env, storage, ps[0].fingerprint, log=print)
    trials = [Trial.from_config(p.cfg, env, log=print) for p in ps]
    for p, t in zip(ps, trials):
        if t.key != p.key:
            raise RuntimeError(f"dataset {p.cfg.dataset!r} changed since planning; run the search again")
    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            for p, t in zip(ps, trials):
                t.load(os.path.join(d, f"trial-{p.key}.pt"))
    every = checkpoint_every or max(1, ps[0].cfg.epochs // 10)
    last: list[dict] = [t.history[-1] if t.history else {} for t in trials]
    while not all(t.done for t in trials):
        for i, t in enumerate(trials):
            if not t.done:
                last[i] = t.run_epoch()
        done = all(t.done for t in trials)
        for p, t in zip(ps, trials):
            if t.done and not storage.exists(record_path(p.study, p.key)):
                rec = trial_record(study=p.study, variant=p.variant, row=p.row, key=p.key, cfg=t.cfg, data=t.data,
                                   history=t.history, status="diverged" if t.diverged else "finished",
                                   confusion=None if t.diverged else t.confusions(), device=t.device, setup_s=0.0,
                                   backbone={"file": os.path.basename(t.backbone_path or ""), **t.backbone_meta},
                                   restarts=0)
                storage.write_json(record_path(p.study, p.key), rec)
        metrics: dict[str, Any] = {"epoch": max(t.epoch for t in trials), "seeds": len(ps),
                                   "diverged": int(any(t.diverged for t in trials)), "trial_done": int(done),
                                   "trial_key": ",".join(p.key for p in ps)}
        for k in MEAN_KEYS:
            vals = [m.get(k) for m in last if isinstance(m.get(k), (int, float))]
            if vals:
                metrics[k] = sum(vals) / len(vals)
            for p, m in zip(ps, last):
                if k in ("acc", "label_free") and isinstance(m.get(k), (int, float)):
                    metrics[f"{k}_s{p.cfg.seed}"] = m[k]
        metrics["objective"] = -1.0 if metrics["diverged"] else float(metrics.get(objective, float("nan")))
        if done or metrics["epoch"] % every == 0:
            with tempfile.TemporaryDirectory() as d:
                for p, t in zip(ps, trials):
                    t.save(os.path.join(d, f"trial-{p.key}.pt"))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)


def run_search(base: TrialConfig, args: StudyArgs, n_trials: int, objective: str, max_concurrent: int,
               sampler_seed: int, asha: bool = True, seeds: list[int] | None = None,
               callbacks: list | None = None) -> int:
    """Run (or resume) the search; returns the process exit code. ``seeds``: with more than
    one, each trial runs them in lock-step and reports their mean. ``callbacks``: extra Tune
    callbacks."""
    with ray_env():
        return _run_search(base, args, n_trials, objective, max_concurrent, sampler_seed, asha,
                           seeds or [base.seed], callbacks or [])


def _run_search(base: TrialConfig, args: StudyArgs, n_trials: int, objective: str, max_concurrent: int,
                sampler_seed: int, asha: bool = True, seeds: list[int] = (0,), callbacks: list = ()) -> int:
    """Optuna TPE (seeded) under Ray Tune, ASHA on the per-epoch objective, Optuna state in a
    journal file in the storage (safe with concurrent workers, resumable)."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    load_plugins(args.plugins)
    storage = Storage(args.storage)
    if not storage.is_local:
        raise StudyError("--storage: the search keeps Optuna's journal in a file, so it needs a local or shared "
                         f"folder, not {args.storage!r}")
    storage.check_location()
    data_mod.check_available(base.dataset, args.env.data_root, args.env.download)
    ds = os.path.basename(base.dataset).replace(".npz", "")
    searched = {p.name for p in searched_params(base.to_dict())}
    bkey = {k: v for k, v in base.to_dict().items() if k not in searched}
    tag = hashlib.sha256(json.dumps(bkey, sort_keys=True).encode()).hexdigest()[:8]
    name = f"search-{ds}-{base.labeler}-{objective}-{tag}"
    if len(seeds) > 1:
        name += "-seeds" + "_".join(map(str, seeds))
    sampler_tag = "" if args.sampler == "tpe" else f"-{args.sampler}"
    name += sampler_tag
    t_start = time.perf_counter()
    interrupted = False
    failed = 0
    from .orchestrate import worker_env
    handle = None
    try:
        handle = RayHandle(args.address, dashboard=args.dashboard, env_vars=worker_env(args))
        gpus = default_gpus_per_trial() if args.gpus_per_trial is None else args.gpus_per_trial
        check_resources(gpus, args.cpus_per_trial)   # before anything is written
        device_type = "cuda" if gpus > 0 else "cpu"
        base, fingerprint = resolve(base, args.env, device_type)
        storage.check_writable()
        os.makedirs(storage.path("search"), exist_ok=True)
        jpath = storage.path("search", f"{name}.journal")
        if args.optuna_storage:
            journal = optuna_storage(args.optuna_storage, jpath)
        else:
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend
            repair_journal(jpath, log=print)
            hooked = "journal-write" in os.environ.get("LSDC_FAULT", "").split(",")   # a test hook only
            journal = JournalStorage((_journal_backend(JournalFileBackend) if hooked else JournalFileBackend)(jpath))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=name, storage=journal, direction="maximize", load_if_exists=True)
        fail_stale_trials(study, journal, log=print)
        storage.delete_dir("search/checkpoints")      # left by a killed run: never resumed
        done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        where = args.optuna_storage or storage.path('search', name + '.journal')
        print(f"[search] {name}: objective {objective}, {done}/{n_trials} trials done, sampler {args.sampler}, "
              f"seeds {list(seeds)}, Optuna storage {where}", flush=True)
        fixed = {"base": base.to_dict(), "env": args.env.to_dict(), "storage": storage.uri, "name": name,
                 "objective": objective, "checkpoint_every": args.checkpoint_every, "fingerprint": fingerprint,
                 "device_type": device_type, "plugins": list(args.plugins), "seeds": list(seeds),
                 "hooks": active_hooks()}
        trainable = tune.with_resources(tune.with_parameters(search_trainable, fixed=fixed),
                                        {"cpu": args.cpus_per_trial, "gpu": gpus})
        if base.pretrain != "none":
            planned = Planned("search", name, "", "trial", base, fingerprint, device_type)
            ray.get(remote(pretrain_task, args.cpus_per_trial, gpus).remote(
                planned.to_dict(), args.env.to_dict(), storage.uri, active_hooks()))
        while not interrupted:
            done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
            if done >= n_trials:
                break
            runs = sorted(int(d.rsplit("-r", 1)[1]) for d in storage.list_dirs("search/tune")
                          if d.startswith(name + "-r") and d.rsplit("-r", 1)[1].isdigit())
            run = f"{name}-r{(runs[-1] + 1) if runs else 1}"
            searcher = UserAttrOptunaSearch(space=functools.partial(search_space, base=fixed["base"]),
                                            metric="objective", mode="max",
                                            sampler=make_sampler(args.sampler, sampler_seed + len(runs)),
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
                    callbacks=[Progress("search", n_trials, done, quiet=args.quiet, epochs=base.epochs),
                               *make_callbacks(args.callbacks, name), *callbacks],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    failure_config=tune.FailureConfig(max_failures=args.max_failures)))
            results = tuner.fit()
            storage.delete_dir("search/checkpoints")  # every trial of the run has ended: none is resumed
            _merge_search_results(storage, name, results, base)
            errors = [r for r in results if r.error is not None]
            now = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
            if errors or now == done:   # failures (reported above) or no progress: stop here
                interrupted = now < n_trials and not errors
                failed, complete = (len(errors) if now < n_trials else 0), now
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if handle is not None:
            handle.close()
    summary = _summarise_search(storage, name, objective, base, journal)
    print(f"[search] wall {time.perf_counter() - t_start:.1f} s; best of {summary['n_trials']} trials "
          f"({summary['n_pruned']} stopped early by ASHA): objective {summary['best']['objective']:.4f}, "
          f"ACC {summary['best']['acc']:.4f}", flush=True)
    print("[search] best configuration: " + json.dumps(summary["best"]["params"]), flush=True)
    print(f"[search] Spearman rank correlation of {objective} with ACC over the trials: "
          f"{summary['spearman_vs_acc']}", flush=True)
    print(f"[search] written {storage.path('search', 'best-' + name + '.json')}", flush=True)
    if failed:
        print(f"[search] {failed} trial(s) failed (errors above); {complete}/{n_trials} trials complete. Fix the "
              f"cause and run the same command again: complete trials are kept.", flush=True)
        return 1
    return 130 if interrupted else 0


def repair_journal(path: str, log=print) -> bool:
    """Cut Optuna's journal at its first torn or corrupt line (a search killed mid-write, a
    damaged file), keeping the original beside it as ``<journal>.corrupt-<n>``; True if it was
    cut. Lines are JSON: nothing is executed."""
    if not os.path.exists(path):
        return False
    with open(path, "rb") as f:
        blob = f.read()
    good = 0
    for line in blob.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            json.loads(line)
        except ValueError:
            break
        good += len(line)
    if good == len(blob):
        return False
    n = 1
    while os.path.exists(f"{path}.corrupt-{n}"):
        n += 1
    os.replace(path, f"{path}.corrupt-{n}")
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(blob[:good])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    log(f"[search] warning: Optuna journal {path} had a torn or corrupt line after byte {good}; cut there "
        f"(original kept as {path}.corrupt-{n})")
    return True


def fail_stale_trials(study, journal, log=print) -> int:
    """Mark FAIL the trials a killed search left RUNNING (this search is the only one on its
    journal), so that they neither pile up nor block the resume; returns how many."""
    import optuna
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:
        journal.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    if stale:
        log(f"[search] {len(stale)} trial(s) left running by an interrupted search marked FAIL; sampling anew")
    return len(stale)


def _journal_backend(base):
    """Optuna's journal file backend with the ``journal-write`` test hook (see lsdc.storage):
    the third append writes half a line and exits as if killed."""
    class Backend(base):
        appends = 0

        def append_logs(self, logs):
            Backend.appends += 1
            if Backend.appends == 3:
                from ..storage import fault_armed
                if fault_armed("journal-write"):
                    with open(self._file_path, "ab") as f:
                        f.write(json.dumps(logs[0]).encode()[:15])
                    os._exit(137)
            return super().append_logs(logs)
    return Backend


def _merge_search_results(storage: Storage, name: str, results, base: TrialConfig) -> None:
    rel = f"search/{name}-trials.json"
    table = storage.read_json(rel) if storage.exists(rel) else {}
    for r in results:
        m = r.metrics or {}
        if not m or r.config is None:
            continue
        params = dict(r.config)
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


