"""N trials stepping at the same time on one machine (fractional GPUs), for ``lsdc.bench``'s
``ray-N`` variants."""
from __future__ import annotations

import time

import ray

from ..config import Env, TrialConfig
from .cluster import RayHandle, check_resources, ray_env, set_threads


class _BenchTrial:
    """One trial's training step in its own Ray worker (for lsdc.bench's ray-N variants)."""

    def __init__(self, cfg_dict: dict, env_dict: dict, warmup: int):
        import torch

        from ..trial import Trial
        set_threads()
        self.trial = Trial.from_config(TrialConfig.from_dict(cfg_dict), Env(**env_dict), log=lambda s: None)
        self.gen = torch.Generator(device=self.trial.device).manual_seed(0)
        for _ in range(warmup):
            self._step()
        self._sync()

    def _sync(self) -> None:
        import torch
        if self.trial.device.type == "cuda":
            torch.cuda.synchronize(self.trial.device)

    def _step(self) -> None:
        self.trial.train_step(self.trial.random_batch(self.gen), 1.0)

    def ready(self) -> bool:
        return True

    def run(self, steps: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        for _ in range(steps):
            self._step()
        self._sync()
        return steps * self.trial.cfg.batch_size, time.perf_counter() - t0


_HANDLE: RayHandle | None = None


def close() -> None:
    """Shut down the Ray the ray-N variants started (nothing if it was the caller's)."""
    global _HANDLE
    if _HANDLE is not None:
        _HANDLE.close()
        _HANDLE = None


def bench_concurrent(n: int, cfg_dict: dict, env_dict: dict, warmup: int, steps: int, gpus_per_trial: float,
                     cpus_per_trial: float) -> dict:
    """N trials stepping at the same time (fractional GPUs): aggregate images over the wall time."""
    global _HANDLE
    if _HANDLE is None:                  # one Ray for all ray-N variants of a run; the caller's if it has one
        with ray_env():
            _HANDLE = RayHandle(None)
    check_resources(gpus_per_trial, cpus_per_trial)
    actor = ray.remote(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial)(_BenchTrial)
    actors = [actor.remote(cfg_dict, env_dict, warmup) for _ in range(n)]
    try:
        ray.get([a.ready.remote() for a in actors])          # all built and warmed up
        t0 = time.perf_counter()
        outs = ray.get([a.run.remote(steps) for a in actors])
        wall = time.perf_counter() - t0
    finally:
        for a in actors:
            ray.kill(a)
    return {"seconds": wall, "images": sum(o[0] for o in outs), "steps": steps * n, "flops_per_step": None,
            "peak_mem_gb": None, "per_trial_images_per_s": [o[0] / o[1] for o in outs]}
