"""lsdc: LSD-C (Linearly Separable Deep Clusters) as a library, and a harness for its ablations.

Importing lsdc (or any of its modules) changes nothing in the importing process: no
environment variable, no global torch setting. Heavy modules load on first use.
"""
from .config import ConfigError, Env, TrialConfig, make_config

__version__ = "0.3.0"
__all__ = ["ConfigError", "Env", "Trial", "TrialConfig", "make_config", "run_trial", "__version__"]


def __getattr__(name: str):
    if name in ("Trial", "run_trial"):          # torch is imported only when a trial is wanted
        from . import trial
        return getattr(trial, name)
    raise AttributeError(f"module 'lsdc' has no attribute {name!r}")
