"""Study results as tidy pandas DataFrames (open data), read from the JSON records only.

    import lsdc.results
    df = lsdc.results.load("results")                      # one row per finished or diverged record
    df.groupby(["study", "dataset", "variant"])["acc_pct"].agg(["mean", "std", "count"])

:func:`load` gives one row per record: ``study, variant, row, kind, dataset, seed, status, key``;
the final metrics; ``wall_s, train_s, images_per_s``; ``hardware`` (a short string),
``device, precision, commit, lsdc_version, torch_version``; ``data_fingerprint`` ("not
fingerprinted" where the record has none: nothing is guessed), ``data_source``, ``data_lossy``
(True for the lossy JPEG copy of CIFAR-10; missing where the record does not say);
``epochs_done, diverged_epoch, restarts, finished_at, reused_from``; and every field of the
trial's config as its own column, prefixed ``cfg_`` (``cfg_batch_size``, ``cfg_labeler``...;
lists such as ``cfg_lr_steps`` become comma-separated strings).

:func:`load_epochs` gives one row per record and epoch (from the record's ``history``), with the
identifying columns ``study, variant, row, kind, dataset, seed, status, key`` and ``epoch``.

Units, the same in both frames: every metric that the records hold as a fraction in [0, 1] is
in **percent**, and its column name ends in ``_pct``: ``acc_pct, nmi_pct, ari_pct,
confident_frac_pct, confident_acc_pct`` and, per epoch, ``stability_pct, balance_pct,
label_free_pct``. Times are in seconds (``_s``), throughput in images per second, ``loss`` (and
``bce``, ``mse``) as the training loop reports it, ``lr`` as is. A diverged record has no final
metrics (NaN), never a number.

Only JSON is read (:func:`lsdc.records.read_records`): nothing is unpickled.
"""
from __future__ import annotations

import math
import os
from typing import Iterable

import pandas as pd

from .records import read_records
from .storage import Storage

NOT_FINGERPRINTED = "not fingerprinted"
PCT = ("acc", "nmi", "ari", "confident_frac", "confident_acc", "stability", "balance", "label_free")
IDS = ["study", "variant", "row", "kind", "dataset", "seed", "status", "key"]
FINAL = ["acc_pct", "nmi_pct", "ari_pct", "confident_frac_pct", "confident_acc_pct", "loss"]
RUN = ["wall_s", "train_s", "images_per_s", "hardware", "device", "precision", "commit", "lsdc_version",
       "torch_version", "data_fingerprint", "data_source", "data_lossy", "epochs_done", "diverged_epoch",
       "restarts", "finished_at", "reused_from"]


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else math.nan


def _metric(name: str, v) -> tuple[str, float]:
    """(column name, value) in this module's units: fractions -> percent with a ``_pct`` name."""
    if name in PCT:
        return f"{name}_pct", 100.0 * _num(v)
    return name, _num(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def hardware(rec: dict) -> str:
    """A short hardware string: the GPU's name, else ``CPU (n thread(s))``."""
    h = rec.get("hardware") or {}
    if h.get("gpu"):
        return str(h["gpu"])
    return f"{h.get('cpu', 'cpu')} ({h.get('torch_threads', '?')} thread(s))"


def _cfg_value(v):
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, dict):
        return str(v)
    return v


def _ids(rec: dict) -> dict:
    return {"study": rec.get("study"), "variant": rec.get("variant"), "row": rec.get("row", ""),
            "kind": rec.get("kind", "trial"), "dataset": rec.get("dataset"), "seed": rec.get("seed"),
            "status": rec.get("status"), "key": rec.get("key")}


def _row(rec: dict) -> dict:
    final = rec.get("final") or {}
    data = rec.get("data") or {}
    versions = rec.get("versions") or {}
    out = _ids(rec)
    for k in ("acc", "nmi", "ari", "confident_frac", "confident_acc", "loss"):
        name, v = _metric(k, final.get(k))
        out[name] = v
    lossy = data.get("lossy") if isinstance(data, dict) else None
    out.update({
        "wall_s": _num(rec.get("wall_s")), "train_s": _num(rec.get("train_s")),
        "images_per_s": _num(rec.get("images_per_s")), "hardware": hardware(rec),
        "device": rec.get("device"), "precision": rec.get("precision"),
        "commit": rec.get("git_commit") or "unknown",
        "lsdc_version": rec.get("lsdc_version") or versions.get("lsdc"),
        "torch_version": versions.get("torch"),
        "data_fingerprint": (data.get("fingerprint") if isinstance(data, dict) else None) or NOT_FINGERPRINTED,
        "data_source": data.get("source") if isinstance(data, dict) else None,
        "data_lossy": bool(lossy) if lossy is not None else None,
        "epochs_done": rec.get("epochs_done"), "diverged_epoch": rec.get("diverged_epoch"),
        "restarts": rec.get("restarts"), "finished_at": rec.get("finished_at"), "reused_from": rec.get("reused_from"),
    })
    for k, v in (rec.get("config") or {}).items():
        out[f"cfg_{k}"] = _cfg_value(v)
    return out


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    if "data_lossy" in df:
        df["data_lossy"] = df["data_lossy"].astype("boolean")
    for c in ("seed", "epochs_done", "diverged_epoch", "restarts", "epoch"):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    return df


def frame(records: Iterable[dict]) -> pd.DataFrame:
    """The tidy per-record frame of already-read records (see the module docstring)."""
    rows = [_row(r) for r in records]
    cols = IDS + FINAL + RUN
    cfg_cols = sorted({k for r in rows for k in r if k.startswith("cfg_")})
    return _typed(pd.DataFrame(rows, columns=cols + cfg_cols))


def epochs_frame(records: Iterable[dict]) -> pd.DataFrame:
    """One row per record and epoch of its ``history``, with the identifying columns."""
    rows = []
    for rec in records:
        ids = _ids(rec)
        for h in rec.get("history") or []:
            row = dict(ids)
            for k, v in h.items():
                name, val = _metric(k, v)
                row[name] = val
            rows.append(row)
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in IDS and k != "epoch"))
    return _typed(pd.DataFrame(rows, columns=IDS + ["epoch"] + extra))


def _storage(storage) -> Storage:
    if isinstance(storage, Storage):
        return storage
    s = str(storage)
    return Storage(s if "://" in s else os.path.abspath(s))


def load(storage: str | os.PathLike | Storage) -> pd.DataFrame:
    """One row per finished (or diverged) record in ``storage`` (a path, a URI or a Storage)."""
    return frame(read_records(_storage(storage))[0])


def load_epochs(storage: str | os.PathLike | Storage) -> pd.DataFrame:
    """One row per record x epoch in ``storage``."""
    return epochs_frame(read_records(_storage(storage))[0])


def write(records: list[dict], out_dir: str) -> list[str]:
    """Both frames as ``results.csv`` / ``epochs.csv`` in ``out_dir``, and as ``.parquet`` when
    pyarrow imports. Returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, df in (("results", frame(records)), ("epochs", epochs_frame(records))):
        path = os.path.join(out_dir, f"{name}.csv")
        df.to_csv(path, index=False)
        written.append(path)
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            continue
        path = os.path.join(out_dir, f"{name}.parquet")
        df.to_parquet(path, index=False)
        written.append(path)
    return written


__all__ = ["NOT_FINGERPRINTED", "epochs_frame", "frame", "hardware", "load", "load_epochs", "write"]
