"""Result storage: a local (shared) folder or any URI that pyarrow / Ray accept (s3://, gs://, ...).

Layout under the storage root::

    backbones/<method>-<dataset>-<key>.pt      pretrained backbones, shared by every study
    <study>/records/<trial key>.json           one self-contained record per finished trial
    <study>/plans/<dataset>.json               what the last run of the study planned
    <study>/checkpoints/<trial key>/           lsdc's own checkpoint of an unfinished trial
                                               (trial.pt: weights only; meta.json: key, epoch, sha256)
    <study>/quarantine/                        records that failed verification, moved aside
    <study>/tune/<experiment>-r<N>/            Ray Tune's results of run N (never restored: it is pickled)

Records are written atomically (write to a temporary name, then rename; on object stores a
single put), so a crash mid-write never leaves a half-written record under its final name.
Files are created readable by the group and others as the umask allows (``0o666 & ~umask``),
like any file a user writes, so a team can share the storage.

Test hooks (nothing happens when they are unset): ``LSDC_FAULT=<point>[,<point>...]`` makes
the process exit with status 137 (as if killed) at that named point: ``record-write`` /
``checkpoint-write`` / ``backbone-write`` (a trial's record, checkpoint or a pretrained
backbone: after the temporary file is written, before the rename), ``mid-epoch`` (in a trial,
after its first epoch), ``journal-write`` (the search: half of a line appended to Optuna's
journal). ``LSDC_FAULT_ONCE=<folder>`` makes each point fire once (a file per point there).
``LSDC_FAULT_ENOSPC=<file>``: while that file exists, storage writes fail with ENOSPC. A run
sends the hooks set in its driver with its work (trials, pretraining, k-means) to the workers,
on any cluster, also one that the caller initialized.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import posixpath
import shutil
import uuid
from typing import Any, Iterator

import pyarrow.fs as pafs


class StorageError(ValueError):
    """A storage location that cannot be used; the message names it and why."""


TEST_HOOKS = ("LSDC_FAULT", "LSDC_FAULT_ONCE", "LSDC_FAULT_ENOSPC")


def active_hooks() -> dict[str, str]:
    """The test hooks set in this process's environment (sent with a run's work to its workers)."""
    return {k: os.environ[k] for k in TEST_HOOKS if os.environ.get(k)}


@contextlib.contextmanager
def environ_set(values: dict[str, str], keep_users: bool = False) -> Iterator[None]:
    """``values`` in ``os.environ`` for the duration of the block (with ``keep_users``, a
    variable already set keeps its value), then the environment exactly as it was."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if keep_users:
            os.environ.setdefault(k, v)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def hooks_applied(hooks: dict[str, str] | None):
    """Inside a worker: the driver's test hooks in the environment for the duration of one piece
    of work (a trial, a pretraining, a k-means), then the environment as it was: a worker that
    Ray reuses for another run does not keep them."""
    return environ_set({k: v for k, v in (hooks or {}).items() if k in TEST_HOOKS})


def fault_armed(point: str) -> bool:
    """Test hook: whether ``$LSDC_FAULT`` names ``point``. With ``$LSDC_FAULT_ONCE`` (a folder)
    only once per point: the first call creates a file named after it there, later ones say no."""
    want = os.environ.get("LSDC_FAULT", "")
    if not want or point not in want.split(","):
        return False
    once = os.environ.get("LSDC_FAULT_ONCE")
    if once:
        try:
            os.makedirs(once, exist_ok=True)
            os.close(os.open(os.path.join(once, point), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
    return True


def fault(point: str) -> None:
    """Test hook: exit as if killed (status 137) at ``point`` when :func:`fault_armed`."""
    if fault_armed(point):
        os._exit(137)


def file_mode() -> int:
    """The mode of a newly created file under the current umask (0o666 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _enospc_hook() -> None:
    """Test hook: ``$LSDC_FAULT_ENOSPC`` names a file; while it exists, storage writes fail with ENOSPC."""
    flag = os.environ.get("LSDC_FAULT_ENOSPC")
    if flag and os.path.exists(flag):
        raise OSError(errno.ENOSPC, "No space left on device (LSDC_FAULT_ENOSPC)")


def _json_default(o: Any):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    """NaN / inf become null so that records are strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


class Storage:
    def __init__(self, location: str):
        if not location:
            raise StorageError("storage: empty location")
        self.is_local = "://" not in location or location.startswith("file://")
        if self.is_local:
            path = location[len("file://"):] if location.startswith("file://") else location
            self.root = os.path.abspath(os.path.expanduser(path))
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
            self.uri = self.root
        else:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(location)
            except Exception as e:  # pyarrow raises many kinds here
                raise StorageError(f"storage: cannot open {location!r} ({e})") from None
            self.root = self.root.rstrip("/")
            self.uri = location.rstrip("/")

    def path(self, *parts: str) -> str:
        """Filesystem path (for ``self.fs``) of a location relative to the root."""
        return posixpath.join(self.root, *parts) if not self.is_local else os.path.join(self.root, *parts)

    def uri_of(self, *parts: str) -> str:
        return self.path(*parts) if self.is_local else "/".join([self.uri, *parts])

    def check_location(self) -> None:
        """Without writing anything: can the root be created (local paths only)?"""
        if not self.is_local:
            return
        path = self.root
        while not os.path.exists(path):
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        if not os.path.isdir(path):
            raise StorageError(f"storage: cannot write to {self.root!r} ({path!r} is not a directory); "
                               f"pass --storage a writable folder or URI")
        if not os.access(path, os.W_OK | os.X_OK):
            raise StorageError(f"storage: cannot write to {self.root!r} ({path!r} is not writable); "
                               f"pass --storage a writable folder or URI")

    def check_writable(self) -> None:
        """Create the root and write + delete a probe file; a one-line error if that fails."""
        probe = self.path(f".write-probe-{uuid.uuid4().hex[:8]}")
        try:
            self.fs.create_dir(self.root, recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"ok")
            self.fs.delete_file(probe)
        except Exception as e:
            reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
            raise StorageError(f"storage: cannot write to {self.uri!r} ({reason}); "
                               f"pass --storage a writable folder or URI") from None

    def write_json(self, rel: str, obj: Any, fault_point: str | None = None) -> None:
        """Atomically write ``obj`` as JSON at ``rel``."""
        blob = json.dumps(_clean(obj), indent=1, default=_json_default, allow_nan=False).encode()
        self.write_bytes(rel, blob, fault_point)

    def write_bytes(self, rel: str, blob: bytes, fault_point: str | None = None) -> None:
        final = self.path(rel)
        parent = posixpath.dirname(final) if not self.is_local else os.path.dirname(final)
        self.fs.create_dir(parent, recursive=True)
        if self.is_local:
            tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex}-{os.path.basename(final)}")
            try:
                with open(tmp, "wb") as f:
                    _enospc_hook()
                    f.write(blob)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, file_mode())
                if fault_point:
                    fault(fault_point)
                os.replace(tmp, final)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:  # an object store's put is atomic
            with self.fs.open_output_stream(final) as f:
                f.write(blob)

    def read_json(self, rel: str) -> Any:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return json.loads(f.read().decode())

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def list(self, rel: str, suffix: str = "") -> list[str]:
        """Names (not paths) of the files directly in ``rel`` ending with ``suffix``; hidden files skipped."""
        info = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        return sorted(posixpath.basename(i.path) for i in info
                      if i.type == pafs.FileType.File and i.path.endswith(suffix)
                      and not posixpath.basename(i.path).startswith("."))

    def list_dirs(self, rel: str = "") -> list[str]:
        info = self.fs.get_file_info(pafs.FileSelector(self.path(rel) if rel else self.root, allow_not_found=True))
        return sorted(posixpath.basename(i.path) for i in info if i.type == pafs.FileType.Directory)

    def get_file(self, rel: str, local_path: str) -> None:
        os.makedirs(os.path.dirname(local_path), exist_ok=True)
        tmp = f"{local_path}.tmp-{uuid.uuid4().hex[:8]}"
        pafs.copy_files(self.path(rel), tmp, source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        os.replace(tmp, local_path)

    def put_file(self, local_path: str, rel: str, fault_point: str | None = None) -> None:
        with open(local_path, "rb") as f:
            self.write_bytes(rel, f.read(), fault_point)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def delete_dir(self, rel: str) -> None:
        """Remove a folder and everything in it; nothing if it does not exist."""
        try:
            if self.is_local:
                shutil.rmtree(self.path(rel), ignore_errors=True)
            elif self.exists(rel):
                self.fs.delete_dir(self.path(rel))
        except OSError:
            pass

    def sweep_tmp(self, rel: str) -> int:
        """Remove the temporary files (``.tmp-*``) a killed writer left under ``rel`` (local
        storage; object stores write atomically). Only for the study runner, before its trials
        start; returns how many."""
        n = 0
        if not self.is_local:
            return 0
        for d, _, files in os.walk(self.path(rel)):
            for f in files:
                if f.startswith(".tmp-"):
                    try:
                        os.remove(os.path.join(d, f))
                        n += 1
                    except OSError:
                        pass
        return n

    def move_aside(self, rel: str, folder: str) -> str:
        """Move the file ``rel`` into ``folder`` (relative to the root) under a new unique
        name; returns the new relative path."""
        dst = f"{folder}/{posixpath.basename(rel)}.{uuid.uuid4().hex[:8]}"
        self.fs.create_dir(self.path(folder), recursive=True)
        self.fs.move(self.path(rel), self.path(dst))
        return dst
