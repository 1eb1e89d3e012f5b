"""Starting or joining Ray, the resources a trial asks for, and the settings of the processes
lsdc starts. Nothing here changes the importing process's environment: :func:`ray_env` sets
Ray's settings only for the duration of a run, and restores them after."""
from __future__ import annotations

import logging
import os
import time

import ray

from ..planning import StudyError
from ..storage import TEST_HOOKS, environ_set

# Ray's settings for the processes lsdc starts: no usage statistics, the classic (terse)
# output engine, no nagging about checkpoint syncing.
RAY_SETTINGS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def ray_env(extra: dict[str, str] | None = None):
    """Set :data:`RAY_SETTINGS` (unless the user set them) for a run, then restore the
    environment exactly as it was."""
    return environ_set({**RAY_SETTINGS, **(extra or {})}, keep_users=True)


def ray_init_kwargs(address: str | None, num_cpus: int | None = None, dashboard: bool = False,
                    env_vars: dict[str, str] | None = None) -> dict:
    """Arguments of ``ray.init``: a private local cluster without dashboard (or, if asked, a
    dashboard bound to 127.0.0.1 only), or a connection to an existing cluster. ``env_vars``
    reach every worker (e.g. ``LSDC_PLUGINS``)."""
    common = dict(logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    if env_vars:
        common["runtime_env"] = {"env_vars": dict(env_vars)}
    if address:
        return dict(address=address, **common)
    return dict(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                **common)


def init_ray(address: str | None, num_cpus: int | None = None, dashboard: bool = False,
             env_vars: dict[str, str] | None = None) -> float:
    """Start or join Ray (see :func:`ray_init_kwargs`); returns the seconds it took."""
    t0 = time.perf_counter()
    if ray.is_initialized():
        return 0.0
    ray.init(**ray_init_kwargs(address, num_cpus, dashboard, env_vars))
    return time.perf_counter() - t0


class RayHandle:
    """Ray for one lsdc run. If the calling process had already initialized Ray (a notebook,
    a user's script, a test session), lsdc uses that connection as it is and leaves it open;
    otherwise it starts a private local cluster (or joins ``address``) and :meth:`close` shuts
    it down and removes the session folder of a local cluster it started."""

    def __init__(self, address: str | None, dashboard: bool = False, env_vars: dict[str, str] | None = None,
                 num_cpus: int | None = None):
        self.owned = not ray.is_initialized()
        self.seconds = 0.0
        self.session_dir: str | None = None
        if not self.owned:
            if address:
                print(f"note: Ray was initialized by the calling process, and lsdc uses that connection; "
                      f"--address {address} is not used", flush=True)
            # lsdc's test hooks travel with the work itself (lsdc.storage.hooks_applied)
            shown = {k: v for k, v in (env_vars or {}).items() if k not in TEST_HOOKS}
            if shown:
                print(f"note: Ray was initialized by the calling process, and lsdc uses it as it is: its "
                      f"runtime_env must set {', '.join(f'{k}={v}' for k, v in shown.items())} for lsdc's "
                      f"workers to see them", flush=True)
            return
        self.seconds = init_ray(address, num_cpus, dashboard, env_vars)
        if not address:
            try:
                self.session_dir = ray._private.worker._global_node.get_session_dir_path()
            except Exception:
                self.session_dir = None

    def close(self) -> None:
        """Shut down what this handle started (nothing if Ray was the caller's). For a local
        cluster, wait until its processes (GCS, raylet, agents, workers) have exited, so that
        a run that returned has left none behind; ``ray.shutdown`` stops the raylet and GCS but
        lets the workers and agents notice on their own, which can take seconds on a busy
        machine."""
        import shutil
        if not self.owned:
            return
        started = ray_processes() if self.session_dir else {}
        try:
            if ray.is_initialized():
                ray.shutdown()
        finally:
            reap(started)
        session = self.session_dir
        if session and os.path.basename(session).startswith("session_") and os.path.isdir(session):
            shutil.rmtree(session, ignore_errors=True)
            latest = os.path.join(os.path.dirname(session), "session_latest")
            if os.path.islink(latest) and os.path.realpath(latest) == os.path.realpath(session):
                try:
                    os.remove(latest)
                except OSError:
                    pass


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, ...; Linux), or
    None where there is no such process or no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """The start time of a process, to tell it from a later one with its pid."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def descendants(*roots: int) -> dict[int, str]:
    """Children, grandchildren, ... of the ``roots`` with their start times (empty where there
    is no ``/proc``)."""
    try:
        stats = {int(e): _stat(int(e)) for e in os.listdir("/proc") if e.isdigit()}
    except OSError:
        return {}
    stats = {pid: f for pid, f in stats.items() if f and len(f) > 19}
    found, frontier = set(), set(roots)
    while frontier:
        frontier = {c for c, f in stats.items() if int(f[1]) in frontier and c not in found}
        found |= frontier
    return {c: stats[c][19] for c in found}


def reap(procs: dict[int, str], timeout: float = 10.0) -> None:
    """Wait up to ``timeout`` seconds for ``procs`` (pid -> start time) to exit, then SIGKILL
    those still there (the same processes, by start time)."""
    import signal

    def alive() -> list[int]:
        # still there: the same process (by start time), not exited (a zombie waits for its parent)
        return [p for p, t in procs.items() if (f := _stat(p)) and len(f) > 19 and f[19] == t and f[0] != "Z"]
    deadline = time.monotonic() + timeout
    left = alive()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = alive()
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def ray_processes() -> dict[int, str]:
    """The processes of the local Ray node this process started (GCS, raylet, agents, log
    monitor) and all their descendants (workers), pid -> start time. Empty where there is no
    such node or no ``/proc``."""
    try:
        node = ray._private.worker._global_node
        roots = [info.process.pid for infos in node.all_processes.values() for info in infos
                 if info.process is not None]
    except Exception:
        return {}
    out = {r: t for r in roots if (t := _start_time(r)) is not None}
    out.update(descendants(*roots))
    return out


def check_resources(gpus_per_trial: float, cpus_per_trial: float) -> None:
    """Fail at once, instead of waiting forever, if no node can host one trial."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    max_gpu = max((n["Resources"].get("GPU", 0.0) for n in nodes), default=0.0)
    max_cpu = max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0)
    summary = ", ".join(f"{k} {v:g}" for k, v in sorted(total.items()) if k in ("CPU", "GPU"))
    if gpus_per_trial > max_gpu:
        what = "has no GPU" if max_gpu == 0 else f"has at most {max_gpu:g} GPU(s) on one node"
        raise StudyError(f"--gpus-per-trial {gpus_per_trial:g}: the Ray cluster {what} ({summary}); "
                         f"use --gpus-per-trial 0 to run on CPUs")
    if cpus_per_trial > max_cpu:
        raise StudyError(f"--cpus-per-trial {cpus_per_trial:g}: no node has that many CPUs ({summary})")


def default_gpus_per_trial() -> float:
    return 1.0 if ray.cluster_resources().get("GPU", 0.0) > 0 else 0.0


def set_threads() -> None:
    """Inside a Ray worker: as many torch threads as the CPUs the task or actor was given."""
    import torch
    try:
        n = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)) or 1
    except Exception:  # outside a Ray worker
        n = os.cpu_count() or 1
    torch.set_num_threads(max(1, n))


def remote(fn, num_cpus: float, num_gpus: float):
    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=2)(fn)
