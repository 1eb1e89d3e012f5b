"""lsdc: LSD-C (Linearly Separable Deep Clusters) as a library, and a harness for its ablations."""
from .config import ConfigError, Env, TrialConfig, make_config
from .trial import Trial, run_trial

__version__ = "0.1.0"
__all__ = ["ConfigError", "Env", "Trial", "TrialConfig", "make_config", "run_trial", "__version__"]
