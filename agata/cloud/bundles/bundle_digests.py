"""What a bundle lists (:class:`agata.protocol.bundle_files.BundleFile`: each file's name,
size and SHA-256) and the cache of digests.

A file is hashed once after each change: :class:`DigestCache` keeps a digest while the
file's inode, size, mtime and ctime are unchanged (any write behind the store's back
changes its ctime, so it is hashed again). Thread-safe: the store is used from worker
threads.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterable
from typing import Protocol

from agata.cloud.bundles.bundle_rules import CHUNK, READ_FLAGS
from agata.protocol.bundle_files import BundleFile

__all__ = ["BundleFile", "DigestCache", "Listed", "as_set"]  # BundleFile: the protocol's

#: (inode, size, mtime ns, ctime ns) of a file as stat'ed.
Identity = tuple[int, int, int, int]


class Listed(Protocol):
    """A listed bundle file, as any side records it (name, size, SHA-256)."""

    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


def as_set(files: Iterable[Listed]) -> set[tuple[str, int, str]]:
    """A listing as a set of ``(name, size, sha256)``, to compare two listings."""
    return {(f.name, f.size, f.sha256) for f in files}


def identity(info: os.stat_result) -> Identity:
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class DigestCache:
    """SHA-256 of bundle files by ``(task_id, name)``, valid while the file is unchanged."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._digests: dict[tuple[str, str], tuple[Identity, str]] = {}

    def digest(self, task_id: str, dir_fd: int, name: str, info: os.stat_result) -> str | None:
        """The SHA-256 of ``name`` in the folder ``dir_fd`` (stat'ed as ``info``): from
        the cache while the file is unchanged, else hashed now. None if the file
        vanished or was replaced by something else than a regular file."""
        with self._guard:
            cached = self._digests.get((task_id, name))
        if cached is not None and cached[0] == identity(info):
            return cached[1]
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
        except OSError:
            return None  # vanished or replaced by a link since the scan
        with open(fd, "rb") as source:
            current = os.fstat(fd)
            if not stat.S_ISREG(current.st_mode):
                return None
            digest = hashlib.sha256()
            while chunk := source.read(CHUNK):
                digest.update(chunk)
        self.remember(task_id, name, current, digest.hexdigest())
        return digest.hexdigest()

    def cached(self, task_id: str, name: str, info: os.stat_result) -> str | None:
        """The SHA-256 of ``name`` (stat'ed as ``info``) if the cache holds it for the
        file as it is, else None (nothing is read)."""
        with self._guard:
            cached = self._digests.get((task_id, name))
        return cached[1] if cached is not None and cached[0] == identity(info) else None

    def remember(self, task_id: str, name: str, info: os.stat_result, sha256: str) -> None:
        """Record the digest of a file just written (stat'ed as ``info``)."""
        with self._guard:
            self._digests[(task_id, name)] = (identity(info), sha256)

    def forget(self, task_id: str) -> None:
        """Drop every digest of the task (its bundle was put back or deleted)."""
        with self._guard:
            for key in [key for key in self._digests if key[0] == task_id]:
                del self._digests[key]
