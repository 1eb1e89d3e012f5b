"""Trial records: one self-contained JSON document per finished trial, and reading them back.

A record holds the resolved config, seed, per-epoch and final metrics, wall time, images/s,
hardware, library versions and git commit. Nothing from the environment is copied into it
(no variables, no tokens), and it is read back as data only (``json``), never executed.
"""
from __future__ import annotations

import datetime as _dt
import json
from typing import Any, Iterable

from .runtime import git_commit, hardware, versions
from .storage import Storage

SCHEMA = 1
FINAL_KEYS = ("acc", "nmi", "ari", "confident_frac", "confident_acc", "loss")


def record_path(study: str, key: str) -> str:
    return f"{study}/records/{key}.json"


def trial_record(*, study: str, variant: str, row: str, cfg, history: list[dict], status: str,
                 confusion: dict | None, device, precision: str, setup_s: float, backbone: dict | None,
                 restarts: int = 0) -> dict[str, Any]:
    """The record of a finished (or diverged) clustering trial."""
    last = history[-1] if history else {}
    evaluated = [h for h in history if "acc" in h]
    final = {k: evaluated[-1].get(k) for k in FINAL_KEYS} if evaluated else {}
    if status == "diverged":
        final = {k: None for k in FINAL_KEYS}
    train_s = sum(h.get("train_s", 0.0) for h in history)
    seen = sum(h.get("images_per_s", 0.0) * h.get("train_s", 0.0) for h in history)
    return {
        "schema": SCHEMA, "kind": "trial", "study": study, "variant": variant, "row": row,
        "key": cfg.key(), "dataset": cfg.dataset, "seed": cfg.seed, "config": cfg.to_dict(),
        "status": status, "diverged_epoch": last.get("epoch") if status == "diverged" else None,
        "epochs_done": len(history), "final": final, "history": history, "confusion": confusion,
        "wall_s": setup_s + sum(h.get("epoch_s", 0.0) for h in history), "setup_s": setup_s,
        "train_s": train_s, "images_per_s": seen / train_s if train_s > 0 else None,
        "device": str(device), "precision": precision, "restarts": restarts, "backbone": backbone,
        "hardware": hardware(device), "versions": versions(), "git_commit": git_commit(),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def kmeans_record(*, study: str, variant: str, row: str, cfg, result: dict, device) -> dict[str, Any]:
    """The record of a k-means baseline on a pretrained backbone's features."""
    return {
        "schema": SCHEMA, "kind": "kmeans", "study": study, "variant": variant, "row": row,
        "key": cfg.key(), "dataset": cfg.dataset, "seed": cfg.seed, "config": cfg.to_dict(),
        "status": "finished", "diverged_epoch": None, "epochs_done": 0,
        "final": {k: result.get(k) for k in ("acc", "nmi", "ari")}, "history": [], "confusion": None,
        "wall_s": result.get("seconds"), "images_per_s": None, "device": str(device),
        "hardware": hardware(device), "versions": versions(), "git_commit": git_commit(),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def finished_keys(storage: Storage, study: str) -> set[str]:
    return {name[:-5] for name in storage.list(f"{study}/records", ".json")}


def read_records(storage: Storage, studies: Iterable[str] | None = None) -> tuple[list[dict], list[str]]:
    """All readable records (of the given studies, or all), and the paths of unreadable ones."""
    good, bad = [], []
    for study in (studies if studies is not None else storage.list_dirs()):
        for name in storage.list(f"{study}/records", ".json"):
            rel = record_path(study, name[:-5])
            try:
                rec = storage.read_json(rel)
                if not isinstance(rec, dict) or rec.get("schema") != SCHEMA or "config" not in rec \
                        or rec.get("status") not in ("finished", "diverged"):
                    raise ValueError("not an lsdc record")
                good.append(rec)
            except (OSError, ValueError, json.JSONDecodeError, UnicodeDecodeError):
                bad.append(storage.uri_of(rel))
    return good, bad


def reuse_records(storage: Storage, study: str, planned: list) -> int:
    """Copy into ``study`` the records that other studies already hold for the same trial
    (same key = same full config and seed, e.g. Table 3's #3 and Table 5's 256 column);
    returns how many were reused."""
    have = finished_keys(storage, study)
    wanted = {p.key: p for p in planned if p.key not in have}
    if not wanted:
        return 0
    n = 0
    for other in storage.list_dirs():
        if other == study or not wanted:
            continue
        for key in finished_keys(storage, other) & set(wanted):
            try:
                rec = storage.read_json(record_path(other, key))
            except (OSError, ValueError):
                continue
            p = wanted.pop(key)
            rec.update(study=study, variant=p.variant, row=p.row, reused_from=other)
            storage.write_json(record_path(study, key), rec)
            n += 1
    return n
