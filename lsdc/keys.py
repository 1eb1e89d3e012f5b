"""Trial keys: what identifies a result, so that stored results survive upgrades of lsdc.

A trial's key (scheme 2) is a hash of

- its **effective configuration**: the fields the trial actually reads. The core fields, the
  parameters of the chosen labeler, mixing, pretraining method and head only (never another
  labeler's parameter), ``precision`` resolved (never ``"auto"``), and only the fields that
  matter given the others (no ``lam``/``rampup`` without the MSE term, no ``momentum`` with
  Adam, no ``lr_gamma`` without steps). Execution settings that leave the maths unchanged
  (:data:`EXECUTION`: device, compile, evaluation interval; thread count and checkpoint
  interval are not config fields at all) are left out;
- the **data fingerprint** (:func:`lsdc.data.array_fingerprint` of the arrays trained on).

A field added to :class:`~lsdc.config.TrialConfig` after scheme 2 was introduced must be
listed in :data:`LEGACY` with its *legacy value*, the value that reproduces results stored
before it existed: while a config holds that value the field stays out of the key, so old
keys do not move. A new default that deliberately changes the method gives new runs new
keys (it differs from the legacy value), and old records keep theirs.

Records of scheme 1 (lsdc 0.1, ``schema: 1``) were keyed by a hash of every field;
:func:`legacy_v1_key` recomputes that key exactly, so a store written by lsdc 0.1 is read as
it is: its records are found, verified and shown as "data not fingerprinted".

This module imports neither torch nor ray. ``tests/keys/test_golden_keys.py`` pins keys.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

SCHEME = 2

# how a trial runs, not what it computes
EXECUTION = ("device", "compile", "eval_every")

# fields read by every trial (the chosen entries' parameters are added per config)
CORE = ("dataset", "split", "eval_split", "width", "shortcut", "head", "freeze_from", "frozen_bn", "labeler",
        "use_mse", "lam", "rampup", "mixing", "optimizer", "lr", "momentum", "weight_decay", "lr_steps",
        "lr_gamma", "epochs", "batch_size", "seed", "precision", "fused_views", "pretrain")

# fields (and registered entries' parameters) added after scheme 2, with the value that
# reproduces earlier results: left out of the key while they hold it.
LEGACY: dict[str, Any] = {
    # RotNet's recipe (lsdc.pretrain): lsdc 0.1 pretrained on the trial's split, kept the last
    # epoch, normalised with lsdc's statistics and stepped the lr schedule per SGD step
    "pretrain_recipe": "lsdc-0.1",
}

# the fields of lsdc 0.1's TrialConfig, whose key hashed all of them (scheme 1)
SCHEMA1_FIELDS = (
    "dataset", "split", "eval_split", "width", "shortcut", "head", "freeze_from", "frozen_bn", "pretrain",
    "pretrain_epochs", "pretrain_seed", "pretrain_batch_size", "pretrain_augment", "labeler", "cosine_tau",
    "sne_tau", "sne_temperature", "knn_k", "use_mse", "lam", "rampup", "mixing", "ricap_target", "mix_beta",
    "optimizer", "lr", "momentum", "weight_decay", "lr_steps", "lr_gamma", "epochs", "batch_size", "seed",
    "device", "precision", "fused_views", "compile", "eval_every")
# what precision "auto" meant in lsdc 0.1, per device type
LEGACY_AUTO_PRECISION = {"cpu": "fp32", "cuda": "bf16"}


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def effective(cfg) -> dict[str, Any]:
    """The effective configuration of a :class:`~lsdc.config.TrialConfig` (see the module doc)."""
    if cfg.precision == "auto":
        raise ValueError("precision: resolve 'auto' (planning does) before computing a key")
    out = {f: _norm(getattr(cfg, f)) for f in CORE}
    if not cfg.use_mse:
        out.pop("lam"), out.pop("rampup")
    if cfg.optimizer != "sgd":
        out.pop("momentum")
    if not cfg.lr_steps:
        out.pop("lr_gamma")
    for entry in cfg.entries():
        for p in entry.params:
            out[p.name] = _norm(cfg.param(p.name))
    for f, legacy in LEGACY.items():
        if f in out and out[f] == _norm(legacy):
            del out[f]
    return out


def trial_key(cfg, fingerprint: str | None) -> str:
    """Scheme-2 key of a clustering trial of ``cfg`` on data with ``fingerprint``."""
    return key_of(effective(cfg), fingerprint)


KMEANS_FIELDS = ("dataset", "split", "eval_split", "width", "shortcut", "pretrain", "seed", "precision")


def kmeans_effective(cfg) -> dict[str, Any]:
    """What a k-means baseline depends on: the backbone it clusters, the seed, the precision."""
    eff = effective(cfg)
    pre = {p.name for e in cfg.entries() if e.family == "pretrain" for p in e.params}
    return {k: v for k, v in eff.items() if k in KMEANS_FIELDS or k in pre}


def kmeans_key(cfg, fingerprint: str | None) -> str:
    """Scheme-2 key of a k-means baseline (``km-`` + a hash of :func:`kmeans_effective` and the data)."""
    return key_of(kmeans_effective(cfg), fingerprint, kmeans=True)


def key_of(eff: dict[str, Any], fingerprint: str | None, kmeans: bool = False) -> str:
    """The scheme-2 key of an effective configuration (as records store it) and a fingerprint."""
    if kmeans:
        return "km-" + _hash({"scheme": SCHEME, "kmeans": eff, "data": fingerprint})
    return _hash({"scheme": SCHEME, "config": eff, "data": fingerprint})


def legacy_v1_key(config: dict[str, Any]) -> str:
    """The scheme-1 key of a config dict (lsdc 0.1: a hash of all of its fields)."""
    missing = [f for f in SCHEMA1_FIELDS if f not in config]
    if missing:
        raise ValueError(f"not a scheme-1 config: {missing[0]} missing")
    return _hash({f: _norm(config[f]) for f in SCHEMA1_FIELDS})


def legacy_v1_candidates(cfg, device_type: str) -> list[str]:
    """The scheme-1 keys under which lsdc 0.1 would have stored ``cfg`` (precision as given,
    or "auto" when that meant the same on ``device_type``); none if ``cfg`` uses anything
    lsdc 0.1 did not have."""
    d = cfg.to_dict()
    extra = d.pop("extra", None) or {}
    if any(k not in LEGACY or _norm(v) != _norm(LEGACY[k]) for k, v in extra.items()) or \
            any(k not in SCHEMA1_FIELDS for k in d):
        return []
    if any(_norm(cfg.param(f)) != _norm(v) for f, v in LEGACY.items()):
        return []
    precisions = [cfg.precision]
    if LEGACY_AUTO_PRECISION.get(device_type) == cfg.precision:
        precisions.append("auto")
    return [legacy_v1_key({**d, "precision": p}) for p in precisions]
