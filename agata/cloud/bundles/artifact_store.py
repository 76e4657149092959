"""Artifacts of runs: files a task's server side saved, kept by the cloud.

A server side writes ``{"type": "artifact", "path": ...}`` (``TaskReporter.save_artifact``)
for a file of its work folder. The cloud copies that file to
``<root>/task_<id>/run_<n>/<name>``, where ``name`` is the file's base name, and records
it in the store; the operator downloads it from
``GET /api/tasks/{task_id}/runs/{run}/artifacts/{name}``.

Refused, with the reason (``INVALID_ARGUMENT``; nothing is kept): a name that breaks the
bundle name rule (:mod:`agata.protocol.bundle_names`), a path outside the work folder
(also through a symbolic link), anything but a regular file, a file over ``max_bytes``
(checked before the copy and again while copying, in case it grows). The copy goes to a
hidden temporary name first and is renamed into place once complete and synced, so a
full disk (``UNAVAILABLE``) or any failure half-way leaves no partial artifact, and an
artifact saved again replaces the old one whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO

from agata.errors import AgataError, ErrorCode, invalid, not_found
from agata.protocol.bundle_names import check_file_name

logger = logging.getLogger(__name__)

#: Default largest artifact (``--artifact-max-mb``).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SavedArtifact:
    """A file copied into a run's store."""

    name: str
    size: int
    sha256: str


class ArtifactStore:
    """The artifacts of every run under ``root`` (see the module docstring)."""

    def __init__(self, root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def folder(self, task_id: str, run: int) -> Path:
        return self.root / f"task_{task_id}" / f"run_{run}"

    def save(self, task_id: str, run: int, work: Path, requested: str) -> SavedArtifact:
        """Copy the file ``requested`` (relative to ``work`` or absolute inside it) into
        the run's store. Blocking (run it in a thread). Raises AgataError with the
        reason; on any failure nothing of the copy is left."""
        name = check_file_name(Path(requested).name or requested)
        base = work.resolve()
        source = (base / requested).resolve()
        if not source.is_relative_to(base):
            raise invalid(f"artifact {requested!r} is not inside the task's work folder")
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)  # a FIFO: no wait
        try:
            fd = os.open(source, flags)
        except FileNotFoundError:
            raise invalid(f"artifact {requested!r}: no such file") from None
        except OSError as exc:
            raise invalid(f"artifact {requested!r} cannot be read: {exc.strerror}") from None
        try:
            self._check_opened(fd, requested, base)
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as handle:
            return self._copy(handle, task_id, run, name)

    def _check_opened(self, fd: int, requested: str, base: Path) -> None:
        """The file opened is a regular file inside ``base`` (a link swapped in after
        the check above is caught here, by where the open file really is)."""
        proc = Path(f"/proc/self/fd/{fd}")
        if proc.exists():
            real = Path(os.readlink(proc))
            if not real.is_relative_to(base):
                raise invalid(f"artifact {requested!r} is not inside the task's work folder")
        stat = os.fstat(fd)
        if not S_ISREG(stat.st_mode):
            raise invalid(f"artifact {requested!r} is not a regular file")
        if stat.st_size > self.max_bytes:
            raise invalid(
                f"artifact {requested!r} has {stat.st_size} bytes, over the limit of "
                f"{self.max_bytes} bytes"
            )

    def _copy(self, handle: BinaryIO, task_id: str, run: int, name: str) -> SavedArtifact:
        folder = self.folder(task_id, run)
        temporary = folder / f".{uuid.uuid4().hex}.part"
        digest, size = hashlib.sha256(), 0
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as target:
                while chunk := handle.read(_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise invalid(
                            f"artifact {name!r} grew over the limit of {self.max_bytes} "
                            "bytes while it was copied"
                        )
                    digest.update(chunk)
                    target.write(chunk)
                target.flush()
                os.fsync(target.fileno())
            os.replace(temporary, folder / name)
        except OSError as exc:
            raise AgataError(
                ErrorCode.UNAVAILABLE,
                f"artifact {name!r} not kept: {exc.strerror or exc} while copying it",
            ) from None
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
        return SavedArtifact(name, size, digest.hexdigest())

    def open(self, task_id: str, run: int, name: str) -> BinaryIO:
        """The stored artifact for reading; ``NOT_FOUND`` for a bad or unknown name."""
        try:
            checked = check_file_name(name)
        except AgataError:
            raise not_found(f"run {run} of task {task_id!r} has no artifact {name!r}") from None
        try:
            return open(self.folder(task_id, run) / checked, "rb")
        except OSError:
            raise not_found(f"run {run} of task {task_id!r} has no artifact {name!r}") from None

    def delete_task(self, task_id: str) -> None:
        """Forget every artifact of a deleted task."""
        shutil.rmtree(self.root / f"task_{task_id}", ignore_errors=True)
