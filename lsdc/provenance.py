"""What a record says about where it ran: hardware, library versions, the git commit.
Imports neither torch nor ray (torch is read only if the process already uses it)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata


def hardware(device=None) -> dict:
    torch = sys.modules.get("torch")
    info = {"machine": platform.machine(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads() if torch else None, "node": platform.node()}
    if device is not None and getattr(device, "type", None) == "cuda" and torch:
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    info["device"] = str(device) if device is not None else None
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("lsdc", "torch", "torchvision", "numpy", "scipy", "scikit-learn", "ray", "optuna"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_commit() -> str | None:
    """The commit of the source tree lsdc runs from (with '+dirty' when it has changes)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
