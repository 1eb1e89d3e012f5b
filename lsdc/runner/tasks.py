"""Backbones and k-means baselines as Ray tasks, and the storage's copy of each backbone."""
from __future__ import annotations

import os

from ..config import Env, TrialConfig
from ..planning import Planned
from ..records import kmeans_record, record_path
from ..storage import Storage, hooks_applied
from .cluster import set_threads


def ensure_backbone_in_storage(cfg: TrialConfig, env: Env, storage: Storage, fingerprint: str | None,
                               log=print) -> str | None:
    """The pretrained backbone of ``cfg`` as a local file, made (once) and kept in the storage."""
    from ..pretrain import backbone_path, ensure_backbone
    if cfg.pretrain == "none":
        return None
    if storage.is_local:
        return ensure_backbone(cfg, env, log=log, fingerprint=fingerprint)
    local = backbone_path(cfg, env.cache_dir, fingerprint)
    rel = "backbones/" + os.path.basename(local)
    if not os.path.exists(local) and storage.exists(rel):
        storage.get_file(rel, local)
    path = ensure_backbone(cfg, env, log=log, fingerprint=fingerprint)
    if not storage.exists(rel):
        storage.put_file(path, rel)
    return path


def backbone_ready(p: Planned, env: Env, storage: Storage) -> bool:
    from ..pretrain import backbone_path
    local = backbone_path(p.cfg, env.cache_dir, p.fingerprint)
    return os.path.exists(local) or (not storage.is_local and storage.exists("backbones/" + os.path.basename(local)))


def pretrain_task(planned: dict, env_dict: dict, storage_uri: str, hooks: dict | None = None) -> str | None:
    set_threads()
    p = Planned.from_dict(planned)
    with hooks_applied(hooks):
        return ensure_backbone_in_storage(p.cfg, Env(**env_dict), Storage(storage_uri), p.fingerprint,
                                          log=lambda s: None)


def kmeans_task(planned: dict, env_dict: dict, storage_uri: str, hooks: dict | None = None) -> dict:
    with hooks_applied(hooks):
        return _kmeans(planned, env_dict, storage_uri)


def _kmeans(planned: dict, env_dict: dict, storage_uri: str) -> dict:
    from ..pretrain import kmeans_baseline
    from ..runtime import resolve_device
    set_threads()
    p = Planned.from_dict(planned)
    env, storage = Env(**env_dict), Storage(storage_uri)
    ensure_backbone_in_storage(p.cfg, env, storage, p.fingerprint, log=lambda s: None)
    res = kmeans_baseline(p.cfg, env, log=lambda s: None)
    if p.cfg.eval_split == "same" and (res.get("data") or {}).get("fingerprint") != p.fingerprint:
        raise RuntimeError(f"dataset {p.cfg.dataset!r} changed since planning; run the study again")
    rec = kmeans_record(study=p.study, variant=p.variant, row=p.row, key=p.key, cfg=p.cfg, result=res,
                        device=resolve_device(p.cfg.device))
    storage.write_json(record_path(p.study, p.key), rec)
    return res
