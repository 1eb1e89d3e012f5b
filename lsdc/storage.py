"""Result storage: a local (shared) folder or any URI that pyarrow / Ray accept (s3://, gs://, ...).

Layout under the storage root::

    backbones/<method>-<dataset>-<key>.pt      pretrained backbones, shared by every study
    <study>/records/<trial key>.json           one self-contained record per finished trial
    <study>/plans/<dataset>.json               what the last run of the study planned
    <study>/tune/<experiment>/                 Ray Tune's experiment state and checkpoints

Records are written atomically (write to a temporary name, then rename; on object stores a
single put), so a crash mid-write never leaves a half-written record under its final name.
"""
from __future__ import annotations

import json
import math
import os
import posixpath
import uuid
from typing import Any

import pyarrow.fs as pafs


class StorageError(ValueError):
    """A storage location that cannot be used; the message names it and why."""


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

    def write_json(self, rel: str, obj: Any) -> None:
        """Atomically write ``obj`` as JSON at ``rel``."""
        blob = json.dumps(_clean(obj), indent=1, default=_json_default, allow_nan=False).encode()
        self.write_bytes(rel, blob)

    def write_bytes(self, rel: str, blob: bytes) -> None:
        final = self.path(rel)
        parent = posixpath.dirname(final) if not self.is_local else os.path.dirname(final)
        self.fs.create_dir(parent, recursive=True)
        if self.is_local:
            tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex}-{os.path.basename(final)}")
            try:
                with open(tmp, "wb") as f:
                    f.write(blob)
                    f.flush()
                    os.fsync(f.fileno())
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

    def put_file(self, local_path: str, rel: str) -> None:
        with open(local_path, "rb") as f:
            self.write_bytes(rel, f.read())
