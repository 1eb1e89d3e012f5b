"""Trial records: one self-contained JSON document per finished trial, and reading them back.

A record holds the resolved config, seed, per-epoch and final metrics, wall time, images/s,
hardware, library versions and git commit. Nothing from the environment is copied into it
(no variables, no tokens), and it is read back as data only (``json``), never executed.
"""
from __future__ import annotations

import datetime as _dt
import json
from typing import Any, Iterable

from . import keys
from .provenance import git_commit, hardware, versions
from .storage import Storage

SCHEMA = 2          # record format; schema 1 = lsdc 0.1 (key scheme 1, no data fingerprint)
FINAL_KEYS = ("acc", "nmi", "ari", "confident_frac", "confident_acc", "loss")
# what the pretraining stored about itself (lsdc.pretrain), copied into the diagnostics
BACKBONE_KEYS = ("final_loss", "rot_acc", "test_rot_acc", "best_epoch", "recipe")
# per-epoch diagnostics (labels for analysis only; see lsdc.trial) kept at the end of a trial
DIAG_KEYS = ("pair_precision", "pair_recall", "pos_frac", "pair_flip_frac", "pos_agreement",
             "nonempty_clusters", "size_entropy")
NOT_FINGERPRINTED = "data not fingerprinted"


def record_path(study: str, key: str) -> str:
    return f"{study}/records/{key}.json"


def _lsdc_version() -> str:
    from . import __version__
    return __version__


def _common(*, kind: str, study: str, variant: str, row: str, key: str, cfg, data: dict, device) -> dict[str, Any]:
    return {"schema": SCHEMA, "key_scheme": keys.SCHEME, "kind": kind, "study": study, "variant": variant,
            "row": row, "key": key, "dataset": cfg.dataset, "seed": cfg.seed, "config": cfg.to_dict(),
            "effective": keys.kmeans_effective(cfg) if kind == "kmeans" else keys.effective(cfg), "data": data, "precision": cfg.precision,
            "lsdc_version": _lsdc_version(), "device": str(device)}


def trial_record(*, study: str, variant: str, row: str, key: str, cfg, data: dict, history: list[dict], status: str,
                 confusion: dict | None, device, setup_s: float, backbone: dict | None,
                 restarts: int = 0) -> dict[str, Any]:
    """The record of a finished (or diverged) clustering trial. ``cfg`` has its precision
    resolved; ``data`` is the provenance of the data trained on (fingerprint, source, ...)."""
    last = history[-1] if history else {}
    evaluated = [h for h in history if "acc" in h]
    final = {k: evaluated[-1].get(k) for k in FINAL_KEYS} if evaluated else {}
    if status == "diverged":
        final = {k: None for k in FINAL_KEYS}
    train_s = sum(h.get("train_s", 0.0) for h in history)
    seen = sum(h.get("images_per_s", 0.0) * h.get("train_s", 0.0) for h in history)
    return {
        **_common(kind="trial", study=study, variant=variant, row=row, key=key, cfg=cfg, data=data, device=device),
        "status": status, "diverged_epoch": last.get("epoch") if status == "diverged" else None,
        "epochs_done": len(history), "final": final, "history": history, "confusion": confusion,
        "wall_s": setup_s + sum(h.get("epoch_s", 0.0) for h in history), "setup_s": setup_s,
        "train_s": train_s, "images_per_s": seen / train_s if train_s > 0 else None,
        "restarts": restarts, "backbone": backbone,
        # the backbone's figures at the start (k-means ACC, pair precision / recall on the fixed
        # sample; rotation or contrastive figures of its pretraining) and the last epoch's
        "diagnostics": {"backbone": {**((backbone or {}).get("diagnostics") or {}),
                                     **{k: (backbone or {}).get(k) for k in BACKBONE_KEYS
                                        if (backbone or {}).get(k) is not None}},
                        "final": {k: next((h[k] for h in reversed(history) if k in h), None) for k in DIAG_KEYS}},
        "hardware": hardware(device), "versions": versions(), "git_commit": git_commit(),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def kmeans_record(*, study: str, variant: str, row: str, key: str, cfg, result: dict, device) -> dict[str, Any]:
    """The record of a k-means baseline on a pretrained backbone's features."""
    return {
        **_common(kind="kmeans", study=study, variant=variant, row=row, key=key, cfg=cfg,
                  data=result.get("data") or {}, device=device),
        "status": "finished", "diverged_epoch": None, "epochs_done": 0,
        "final": {k: result.get(k) for k in ("acc", "nmi", "ari")}, "history": [], "confusion": None,
        "wall_s": result.get("seconds"), "images_per_s": None,
        "hardware": hardware(device), "versions": versions(), "git_commit": git_commit(),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def content_key(rec: dict) -> str:
    """The key a record's own content hashes to, under the key scheme it was written with
    (its ``schema`` field says which). Raises ValueError if it cannot be computed."""
    prefix = "km-" if rec.get("kind") == "kmeans" else ""
    if rec.get("schema") == 1:
        return prefix + keys.legacy_v1_key(rec["config"])
    if rec.get("schema") == 2:
        eff, fp = rec.get("effective"), (rec.get("data") or {}).get("fingerprint")
        if not isinstance(eff, dict):
            raise ValueError("no effective configuration")
        cfg = rec.get("config") or {}
        extra = cfg.get("extra") or {}
        for k, v in eff.items():   # the effective configuration must be the config's own
            if (cfg[k] if k in cfg else extra.get(k, v)) != v:
                raise ValueError(f"effective {k} differs from the config's")
        return keys.key_of(eff, fp, kmeans=bool(prefix))
    raise ValueError(f"unknown record schema {rec.get('schema')!r}")


def finished_keys(storage: Storage, study: str) -> set[str]:
    """The names of the record files in ``study`` (unverified: see :func:`verified_keys`)."""
    return {name[:-5] for name in storage.list(f"{study}/records", ".json")}


METRICS = ("acc", "nmi", "ari")
# Allowed ranges: ACC and NMI lie in [0, 1]; ARI is below 0 when the clusters agree with the
# classes less than chance does (its minimum is -0.5), as a trial that collapsed can.
METRIC_RANGE = {"acc": (0.0, 1.0), "nmi": (0.0, 1.0), "ari": (-0.5, 1.0)}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(rec: Any, key: str, study: str | None = None) -> dict:
    """``rec`` verified as the record of ``key`` (of ``study``, if given); ValueError naming
    the first check it fails. Schema-1 records come back with ``data.note`` saying they are
    not fingerprinted."""
    if not isinstance(rec, dict) or rec.get("schema") not in (1, SCHEMA) or not isinstance(rec.get("config"), dict) \
            or rec.get("status") not in ("finished", "diverged"):
        raise ValueError("not an lsdc record")
    for field, types in (("study", str), ("variant", str), ("final", dict), ("history", list)):
        if not isinstance(rec.get(field), types):
            raise ValueError(f"field {field!r} missing or not a {types.__name__}")
    if study is not None and rec["study"] != study:
        raise ValueError(f"it is a record of study {rec['study']!r}, not {study!r}")
    seed = rec.get("seed", rec["config"].get("seed"))
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0 or seed != rec["config"].get("seed"):
        raise ValueError(f"its seed {seed!r} is not its config's seed {rec['config'].get('seed')!r}")
    for m in METRICS:
        v, (lo, hi) = rec["final"].get(m), METRIC_RANGE[m]
        if v is not None and (not _is_num(v) or not lo <= v <= hi):
            raise ValueError(f"final {m} {v!r} is not a number in [{lo:g}, {hi:g}] or null")
    for m in ("confident_frac", "confident_acc", "loss"):
        v = rec["final"].get(m)
        if v is not None and not _is_num(v):
            raise ValueError(f"final {m} {v!r} is not a number or null")
    if content_key(rec) != key:
        raise ValueError("its content does not hash to its file name")
    if rec.get("schema") == SCHEMA and rec.get("key", key) != key:
        raise ValueError(f"its key field {rec.get('key')!r} is not its file name")
    if rec.get("schema") == 1:
        rec = dict(rec, data={"fingerprint": None, "note": NOT_FINGERPRINTED})
    return rec


_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError, UnicodeDecodeError)


def verify(storage: Storage, study: str, key: str) -> dict:
    """The record ``key`` of ``study``, read as JSON and verified; ValueError (with the
    reason) if it cannot be read or fails a check."""
    try:
        rec = storage.read_json(record_path(study, key))
    except _READ_ERRORS as e:   # truncated, not JSON, not UTF-8, gone
        raise ValueError(f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    try:
        return _check(rec, key, study)
    except ValueError:
        raise
    except _READ_ERRORS as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def read_records(storage: Storage, studies: Iterable[str] | None = None,
                 reasons: dict[str, str] | None = None) -> tuple[list[dict], list[str]]:
    """All readable, verified records (of the given studies, or all), and the paths of the
    others (with why in ``reasons``, if given). Never raises on a bad record. Records of
    schema 1 are read as they are, with ``data.fingerprint`` None."""
    good, bad = [], []
    for study in (studies if studies is not None else storage.list_dirs()):
        for name in storage.list(f"{study}/records", ".json"):
            try:
                good.append(verify(storage, study, name[:-5]))
            except Exception as e:   # a bad record never crashes a reader
                bad.append(storage.uri_of(record_path(study, name[:-5])))
                if reasons is not None:
                    reasons[bad[-1]] = str(e)
    return good, bad


def verified_keys(storage: Storage, study: str, bad: dict[str, str] | None = None) -> set[str]:
    """The keys of the records of ``study`` that pass :func:`verify`; the others in ``bad``
    (key -> reason)."""
    out = set()
    for key in finished_keys(storage, study):
        try:
            verify(storage, study, key)
            out.add(key)
        except Exception as e:
            if bad is not None:
                bad[key] = str(e)
    return out


def done_keys(storage: Storage, study: str, planned: list, bad: dict[str, str] | None = None) -> set[str]:
    """The keys of ``planned`` that have a verified record in ``study``: under their key, or
    under one of their lsdc 0.1 keys (a store written by lsdc 0.1 is recognised as it is)."""
    have = verified_keys(storage, study, bad)
    return {p.key for p in planned if p.key in have or any(k in have for k in p.legacy_keys)}


def quarantine(storage: Storage, study: str, log=print, bad: dict[str, str] | None = None) -> list[str]:
    """Move every record of ``study`` that fails verification to ``<study>/quarantine/``,
    naming each and why; returns the new paths. ``bad`` (key -> reason, as filled by
    :func:`done_keys` / :func:`verified_keys`) saves verifying the study's records again.
    Only the study runner calls this: readers skip."""
    storage.sweep_tmp(f"{study}/records")        # left by a writer killed before its rename
    storage.sweep_tmp(f"{study}/checkpoints")
    if bad is None:
        bad = {}
        verified_keys(storage, study, bad)
    moved = []
    for key, why in sorted(bad.items()):
        try:
            dst = storage.move_aside(record_path(study, key), f"{study}/quarantine")
        except OSError as e:
            log(f"[{study}] record {storage.uri_of(record_path(study, key))} is invalid ({why}) and could not be "
                f"moved aside ({e}); it is ignored")
            continue
        moved.append(dst)
        log(f"[{study}] quarantined record {key}.json ({why}): moved to {storage.uri_of(dst)}; its trial runs again")
    return moved


def reuse_records(storage: Storage, study: str, planned: list, done: set[str] | None = None) -> int:
    """Copy into ``study`` the records that other studies already hold for the same trial
    (same key = same effective config, seed and data, e.g. Table 3's #3 and Table 5's 256
    column; lsdc 0.1 records under their own key); returns how many were reused. Each is
    verified as a record of its own study first. ``done``: :func:`done_keys` of ``study``,
    if the caller has it already."""
    if done is None:
        done = done_keys(storage, study, planned)
    wanted = {p.key: p for p in planned if p.key not in done}
    if not wanted:
        return 0
    n = 0
    for other in storage.list_dirs():
        if other == study or not wanted:
            continue
        have = finished_keys(storage, other)
        for key, p in list(wanted.items()):
            found = next((k for k in [key, *p.legacy_keys] if k in have), None)
            if found is None:
                continue
            try:
                rec = verify(storage, other, found)
            except ValueError:
                continue
            if rec.get("schema") == 1:
                rec = storage.read_json(record_path(other, found))   # copied as written, not annotated
            del wanted[key]
            rec.update(study=study, variant=p.variant, row=p.row, reused_from=other)
            storage.write_json(record_path(study, found), rec)
            n += 1
    return n


def seal(rec: dict, fingerprint: str = "0123456789abcdef") -> dict:
    """A schema-2 record from a record-like dict with a ``config`` (for tests, tools and
    migrations): resolves the precision, adds the effective configuration and the data
    fingerprint (``rec["data"]["fingerprint"]`` if given), and sets ``key`` to what the
    content hashes to. Returns a new dict."""
    from .config import TrialConfig
    out = dict(rec)
    cfg = TrialConfig.from_dict(out["config"])
    if cfg.precision == "auto":
        cfg = cfg.replace(precision=rec.get("precision") or "fp32")
    kind = out.get("kind", "trial")
    data = dict(out.get("data") or {})
    data.setdefault("fingerprint", fingerprint)
    out.update(schema=SCHEMA, key_scheme=keys.SCHEME, config=cfg.to_dict(), precision=cfg.precision, data=data,
               effective=keys.kmeans_effective(cfg) if kind == "kmeans" else keys.effective(cfg))
    out["key"] = content_key(out)
    return out
