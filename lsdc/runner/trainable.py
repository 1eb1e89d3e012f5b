"""The Ray Tune function trainable: one clustering trial, reported every epoch, checkpointed
and resumable, its record written (atomically) when it ends.

Checkpoints are lsdc's own, in the storage under ``<study>/checkpoints/<trial key>/``: a
weights-only torch file per epoch (``trial-<epoch>.pt``, read with ``weights_only=True``) and
``meta.json`` (key, epoch, restarts, file, sha256, and the Ray node that wrote it), written after
the file it names. A checkpoint is used only if its meta's key is the trial's and the file's
hash matches; anything else is discarded with a warning and the trial starts from scratch. Ray
Tune's own (pickled) state is never read back."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from typing import Any

import ray
from ray import tune

from ..config import Env
from ..planning import Planned
from ..records import record_path, trial_record, verify
from ..registry import load_plugins
from ..storage import Storage, fault, hooks_applied
from .cluster import set_threads
from .tasks import ensure_backbone_in_storage

REPORT_KEYS = ("epoch", "loss", "bce", "mse", "acc", "nmi", "ari", "confident_frac", "confident_acc", "lr",
               "w_cons", "epoch_s", "train_s", "images_per_s", "stability", "balance", "label_free")


def lsdc_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable of a study's planned trial (``config["spec"]``)."""
    load_plugins(config.get("plugins") or ())
    with hooks_applied(config.get("hooks")):
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
                   objective: str | None = None, tune_checkpoints: bool = False) -> None:
    """Run (or resume) the planned trial ``p`` inside a Tune trial. With ``tune_checkpoints``
    (``lsdc.tune.trainable`` in a user's own Tuner) it checkpoints through Tune
    (``tune.report(..., checkpoint=...)``, resumed from ``tune.get_checkpoint()``, the
    user's experiment); otherwise through lsdc's own checkpoints in the storage."""
    from ..trial import Trial
    set_threads()
    cfg = p.cfg
    rel = record_path(p.study, p.key)
    if storage.exists(rel):
        # finished before the driver could register it (a killed driver): never train it again
        try:
            rec = verify(storage, p.study, p.key)
        except ValueError as e:
            print(f"[{p.study}] warning: record {rel} is invalid ({e}); running the trial again", flush=True)
        else:
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
    if tune_checkpoints:
        ck = tune.get_checkpoint()
        if ck is not None:
            with ck.as_directory() as d:
                trial.load(os.path.join(d, "trial.pt"))          # weights_only, and the trial's key checked
                with open(os.path.join(d, "meta.json")) as f:
                    restarts = int(json.load(f)["restarts"]) + 1
    else:
        got = load_checkpoint(storage, p, trial, log=print)
        if got is False:      # a failed load may have left partial state
            trial = Trial.from_config(cfg, env, log=print)
        elif got is not None:
            restarts = got
    setup_s = time.perf_counter() - t0
    every = checkpoint_every or max(1, cfg.epochs // 10)

    def write_record() -> None:
        rec = trial_record(study=p.study, variant=p.variant, row=p.row, key=p.key, cfg=trial.cfg, data=trial.data,
                           history=trial.history, status="diverged" if trial.diverged else "finished",
                           confusion=None if trial.diverged else trial.confusions(), device=trial.device,
                           setup_s=setup_s,
                           backbone={"file": os.path.basename(trial.backbone_path or ""), **trial.backbone_meta},
                           restarts=restarts)
        rec["ray_node_id"] = _node_id()
        storage.write_json(rel, rec, "record-write")

    for m in trial:
        metrics = _metrics(m, p.key, trial.diverged, trial.done, objective)
        if trial.done:
            write_record()  # before the last report: a crash after it loses nothing
            storage.delete_dir(checkpoint_dir(p))
        elif trial.epoch % every == 0 and not tune_checkpoints:
            save_checkpoint(storage, p, trial, restarts)
        if tune_checkpoints and (trial.done or trial.epoch % every == 0):
            with tempfile.TemporaryDirectory() as d:
                trial.save(os.path.join(d, "trial.pt"))
                with open(os.path.join(d, "meta.json"), "w") as f:
                    json.dump({"restarts": restarts, "epoch": trial.epoch, "key": p.key}, f)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)
        if not trial.done and trial.epoch == 1:
            fault("mid-epoch")
    if trial.done and not storage.exists(rel):  # restored from the final checkpoint
        write_record()
        storage.delete_dir(checkpoint_dir(p))


def checkpoint_dir(p: Planned) -> str:
    return f"{p.study}/checkpoints/{p.key}"


def save_checkpoint(storage: Storage, p: Planned, trial, restarts: int) -> None:
    """The trial's state as ``trial-<epoch>.pt`` (weights only), then ``meta.json`` naming it,
    then the older files removed: a kill at any moment leaves a usable checkpoint or none."""
    folder = checkpoint_dir(p)
    name = f"trial-{trial.epoch}.pt"
    with tempfile.TemporaryDirectory() as d:
        trial.save(os.path.join(d, name))
        with open(os.path.join(d, name), "rb") as f:
            blob = f.read()
    storage.write_bytes(f"{folder}/{name}", blob, "checkpoint-write")
    storage.write_json(f"{folder}/meta.json", {"key": p.key, "epoch": trial.epoch, "restarts": restarts,
                                               "file": name, "sha256": hashlib.sha256(blob).hexdigest(),
                                               "ray_node_id": _node_id()},   # where it was written
                       "checkpoint-write")
    for old in storage.list(folder, ".pt"):
        if old != name:
            try:
                storage.fs.delete_file(storage.path(folder, old))
            except OSError:
                pass


def _node_id() -> str | None:
    """The Ray node this process runs on; None outside Ray (where asking would start one)."""
    if not ray.is_initialized():
        return None
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return None


def load_checkpoint(storage: Storage, p: Planned, trial, log=print):
    """Resume ``trial`` from its checkpoint in the storage: the number of restarts so far
    (>= 1) if it was loaded, None if there is none, False if one was there but is unusable
    (discarded with a warning: the trial must start from scratch)."""
    from ..models import CheckpointError
    folder = checkpoint_dir(p)
    if not storage.exists(f"{folder}/meta.json"):
        if storage.list(folder):
            storage.delete_dir(folder)      # a file without its meta: a write was interrupted
        return None
    try:
        meta = storage.read_json(f"{folder}/meta.json")
        if not isinstance(meta, dict) or meta.get("key") != p.key:
            raise CheckpointError(f"it belongs to trial {meta.get('key') if isinstance(meta, dict) else '?'}")
        name = meta.get("file")
        if not isinstance(name, str) or "/" in name or not name.endswith(".pt"):
            raise CheckpointError(f"bad file name {name!r}")
        blob = storage.read_bytes(f"{folder}/{name}")
        if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
            raise CheckpointError("its file does not match its hash")
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "trial.pt"), "wb") as f:
                f.write(blob)
            trial.load(os.path.join(d, "trial.pt"))          # weights_only=True; checks the config key
        restarts = int(meta.get("restarts", 0)) + 1
        log(f"[{p.study}] trial {p.variant}/s{p.cfg.seed} resumes from its checkpoint at epoch {trial.epoch}")
        return restarts
    except Exception as e:   # corrupt, foreign, truncated: never fatal, never executed
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        log(f"[{p.study}] warning: checkpoint {storage.uri_of(folder)} of trial {p.variant}/s{p.cfg.seed} is "
            f"unusable ({reason}); discarded, the trial starts from scratch")
        storage.delete_dir(folder)
        return False
