"""lsdc for your own Ray Tune (and Optuna) code: a function trainable over a FLAT config.

    from ray import tune
    import lsdc.tune

    tuner = tune.Tuner(lsdc.tune.trainable, param_space={
        "dataset": "digits", "epochs": 2, "batch_size": tune.grid_search([64, 128])})
    results = tuner.fit()
    print(results.get_dataframe()[["config/batch_size", "acc"]])

The config holds any :class:`lsdc.config.TrialConfig` field or registered parameter (``lr``,
``labeler``, ``knn_k``, ...) plus ``dataset`` (default ``digits``, the embedded dataset that runs
anywhere); the dataset's preset (supplement Table 1) fills the rest. Any other key is an error
that names it. Each epoch reports (``eval_every`` is 1 here unless the config sets it) ``acc``,
``nmi``, ``ari``, ``loss``, ``label_free`` (the
label-free score: augmentation stability x cluster balance), ``stability``, ``balance``,
``epoch``, ``trial_done`` and ``trial_key``; the trial checkpoints (every tenth of its epochs and
at the end) and resumes from Tune's checkpoint.

Where things live is passed with ``tune.with_parameters`` (all optional)::

    tune.with_parameters(lsdc.tune.trainable, data_root="/data", cache_dir="/shared/lsdc-cache",
                         storage="/shared/results", study="mine")

``data_root``: datasets (default ``$LSDC_DATA`` or ./data); ``cache_dir``: pretrained backbones,
shared by trials (default ``$LSDC_CACHE`` or ~/.cache/lsdc); ``storage``: when given, one lsdc
record per finished trial in ``<storage>/<study>/records/`` (what ``analysis/make_tables.py`` and
``lsdc.results.load`` read); without it no record is written. ``download``: let torchvision fetch
a missing dataset; ``checkpoint_every``: epochs between checkpoints.
"""
from __future__ import annotations

import os
from typing import Any

from .config import ConfigError, Env, make_config
from .planning import Planned, resolve
from .storage import Storage

__all__ = ["trainable", "planned_from_config"]

DEFAULT_DATASET = "digits"


class _NoRecords(Storage):
    """A storage that keeps nothing: the trainable without ``storage`` writes no record."""

    def __init__(self):
        super().__init__(os.path.join(os.path.expanduser("~"), ".cache", "lsdc", "no-records"))

    def write_json(self, rel: str, obj: Any, fault_point: str | None = None) -> None:
        return None

    def write_bytes(self, rel: str, blob: bytes, fault_point: str | None = None) -> None:
        return None

    def delete_dir(self, rel: str) -> None:
        return None

    def exists(self, rel: str) -> bool:
        return False


def planned_from_config(config: dict[str, Any], env: Env, study: str = "tune", device_type: str | None = None) -> Planned:
    """A :class:`~lsdc.planning.Planned` trial from a flat config: the dataset's preset, then
    the config; ``precision`` resolved for where it runs, the data fingerprinted."""
    config = dict(config)
    dataset = config.pop("dataset", DEFAULT_DATASET)
    # a user's scheduler or searcher reads the metrics of every epoch: evaluate every epoch
    # unless the config says otherwise (digits' preset evaluates every 5)
    cfg = make_config(dataset, **{"eval_every": 1, **config})
    if device_type is None:
        from .runtime import resolve_device
        device_type = resolve_device(cfg.device).type
    cfg, fp = resolve(cfg, env, device_type)
    variant = ",".join(f"{k}={config[k]}" for k in sorted(config) if k != "seed") or "preset"
    return Planned(study, variant, "", "trial", cfg, fp, device_type)


def trainable(config: dict[str, Any], data_root: str | None = None, cache_dir: str | None = None,
              storage: str | None = None, study: str = "tune", download: bool = False,
              checkpoint_every: int | None = None) -> None:
    """Ray Tune function trainable of one LSD-C clustering trial over a flat config (see the
    module's docstring)."""
    from .runner.trainable import run_tune_trial
    kw = {k: v for k, v in (("data_root", data_root), ("cache_dir", cache_dir)) if v}
    env = Env(download=download, **kw)
    try:
        p = planned_from_config(config, env, study)
    except ConfigError as e:
        raise ConfigError(f"lsdc.tune.trainable: {e}") from None
    run_tune_trial(p, env, Storage(storage) if storage else _NoRecords(), checkpoint_every, tune_checkpoints=True)
