"""Where and how a trial runs: device, precision, seeds, and what a record says about it."""
from __future__ import annotations

import contextlib

import torch

from .config import ConfigError, resolve_precision_name


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} requested but no CUDA device is available; allowed here: cpu, auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device: {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def configure(device: torch.device, precision: str | None = None) -> None:
    """Process-wide settings for running on ``device``. On CPUs, flush denormal floats to zero:
    tiny gradients otherwise make single convolution backward passes 10-20x slower (measured:
    a 1.4 s step took 20 s on a 2-core Xeon); only values below ~1e-38 change.

    With a resolved ``precision`` on CUDA, set TF32 for matmuls and cuDNN convolutions: on
    for ``tf32``, off otherwise (PyTorch's default lets cuDNN convolutions use TF32, which is
    not the reference code's fp32). A trial calls this when it starts, so a worker process
    that runs several trials one after the other gives each its own setting."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    if device.type == "cuda" and precision is not None:
        set_tf32(precision == "tf32")


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


@contextlib.contextmanager
def exact_fp32():
    """Full fp32 (no TF32) inside the block, whatever the process setting; restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    set_tf32(False)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def resolve_precision(precision: str, device: torch.device) -> str:
    return resolve_precision_name(precision, device.type)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the network's forward; the losses cast to fp32 themselves. (``tf32``
    is a process setting, see :func:`configure`; ``fp32`` and ``tf32`` need no context.)"""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


from .provenance import git_commit, hardware, versions  # noqa: E402,F401  (re-exported)
