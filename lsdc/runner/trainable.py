"""The Ray Tune function trainable: one clustering trial, reported every epoch, checkpointed
and resumable, its record written (atomically) when it ends."""
from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

import ray
from ray import tune

from ..config import Env
from ..planning import Planned
from ..records import record_path, trial_record
from ..registry import load_plugins
from ..storage import Storage
from .cluster import set_threads
from .tasks import ensure_backbone_in_storage

REPORT_KEYS = ("epoch", "loss", "bce", "mse", "acc", "nmi", "ari", "confident_frac", "confident_acc", "lr",
               "w_cons", "epoch_s", "train_s", "images_per_s", "stability", "balance", "label_free")


def lsdc_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable of a study's planned trial (``config["spec"]``)."""
    load_plugins(config.get("plugins") or ())
    run_tune_trial(Planned.from_dict(config["spec"]), Env(**config["env"]), Storage(config["storage"]),
                   config.get("checkpoint_every"))


def _metrics(m: dict, trial_key: str, diverged: bool, done: bool, objective: str | None) -> dict:
    out = {k: m[k] for k in REPORT_KEYS if isinstance(m.get(k), (int, float))}
    out.update(diverged=int(diverged), trial_done=int(done), trial_key=trial_key)
    if objective is not None:
        # a diverged trial is the worst possible outcome, not a missing one
        out["objective"] = -1.0 if diverged else float(m.get(objective, float("nan")))
    return out


def run_tune_trial(p: Planned, env: Env, storage: Storage, checkpoint_every: int | None,
                   objective: str | None = None) -> None:
    """Run (or resume) the planned trial ``p`` inside a Tune trial."""
    from ..trial import Trial
    set_threads()
    cfg = p.cfg
    rel = record_path(p.study, p.key)
    if storage.exists(rel):
        # finished before the driver could register it (a killed driver): never train it again
        rec = storage.read_json(rel)
        last = (rec.get("history") or [{}])[-1]
        tune.report(_metrics(last, p.key, rec["status"] == "diverged", True, objective))
        return
    t0 = time.perf_counter()
    ensure_backbone_in_storage(cfg, env, storage, p.fingerprint, log=print)
    trial = Trial.from_config(cfg, env, log=print)
    if trial.key != p.key:
        raise RuntimeError(f"dataset {cfg.dataset!r} changed since planning (trial key {trial.key}, planned "
                           f"{p.key}); run the study again")
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
        rec = trial_record(study=p.study, variant=p.variant, row=p.row, key=p.key, cfg=trial.cfg, data=trial.data,
                           history=trial.history, status="diverged" if trial.diverged else "finished",
                           confusion=None if trial.diverged else trial.confusions(), device=trial.device,
                           setup_s=setup_s,
                           backbone={"file": os.path.basename(trial.backbone_path or ""), **trial.backbone_meta},
                           restarts=restarts)
        rec["ray_node_id"] = ray.get_runtime_context().get_node_id()
        storage.write_json(rel, rec)

    for m in trial:
        metrics = _metrics(m, p.key, trial.diverged, trial.done, objective)
        if trial.done:
            write_record()  # before the last report: a crash after it loses nothing
        if trial.done or trial.epoch % every == 0:
            with tempfile.TemporaryDirectory() as d:
                trial.save(os.path.join(d, "trial.pt"))
                with open(os.path.join(d, "meta.json"), "w") as f:
                    json.dump({"restarts": restarts, "epoch": trial.epoch, "key": p.key}, f)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)
    if trial.done and not storage.exists(rel):  # restored from the final checkpoint
        write_record()
