"""The undo journal of a bundle write: what makes "files written" and "listing recorded"
one recoverable step.

An upload changes two places that no single transaction spans: the bundle folder on disk
and the listing (names, sizes, SHA-256) in the store. While a writer changes the files and
records the listing, the previous files are kept in a journal folder in the bundle store's
staging area (same file system)::

    .staging/undo-XXXX/lock          flock'ed by the writer for as long as it runs
    .staging/undo-XXXX/files/<name>  hard links of the bundle's previous files (no copy)
    .staging/undo-XXXX/journal.json  {"task_id": ..., "before": [names]}

The order of steps is what makes every crash recoverable:

1. create the folder, take the lock, link every previous file into ``files/``, fsync;
2. write ``journal.json`` atomically (temporary file, fsync, rename, fsync of the folder).
   From here on the journal *exists*; before it, nothing in the bundle changed and a
   journal folder without ``journal.json`` is just removed;
3. the writer replaces files in the bundle and records the listing (the commit point);
4. ``journal.json`` is removed first, then the rest of the folder.

A process that dies leaves its journal unlocked (the kernel drops a dead process's
``flock``). Whoever finds an unlocked journal compares the bundle on disk with the listing
the store holds: equal means step 3 completed and the journal is dropped; different means
it did not, and the previous files are put back (:meth:`UndoJournal.restore`, which may
itself be interrupted and run again). A journal still locked belongs to a live writer and
is left alone, so another process of the same cloud may recover at any time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from agata.errors import AgataError, ErrorCode

logger = logging.getLogger(__name__)

JOURNAL_PREFIX: Final = "undo-"
_JOURNAL: Final = "journal.json"
_LOCK: Final = "lock"
_FILES: Final = "files"
_INCOMPLETE_SECONDS: Final = 60.0
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UndoJournal:
    """The previous files of one task's bundle, kept while a write runs (see module)."""

    def __init__(self, folder: Path, task_id: str, before: frozenset[str], lock_fd: int) -> None:
        self.folder = folder
        self.task_id = task_id
        self.before = before
        self._lock_fd: int | None = lock_fd

    @classmethod
    def create(cls, staging: Path, task_id: str, bundle_fd: int | None) -> UndoJournal:
        """Steps 1 and 2: keep the bundle's regular files (``bundle_fd``'s entries)."""
        folder = Path(tempfile.mkdtemp(prefix=JOURNAL_PREFIX, dir=staging))
        lock_fd = os.open(folder / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            os.mkdir(folder / _FILES, 0o700)
            before = set()
            files_fd = os.open(folder / _FILES, _DIR_FLAGS)
            try:
                for name in os.listdir(bundle_fd) if bundle_fd is not None else []:
                    info = os.stat(name, dir_fd=bundle_fd, follow_symlinks=False)
                    if not stat.S_ISREG(info.st_mode):
                        continue
                    os.link(
                        name, name, src_dir_fd=bundle_fd, dst_dir_fd=files_fd, follow_symlinks=False
                    )
                    before.add(name)
                os.fsync(files_fd)
            finally:
                os.close(files_fd)
            _write_durably(folder, _JOURNAL, {"task_id": task_id, "before": sorted(before)})
        except BaseException:
            os.close(lock_fd)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(folder, task_id, frozenset(before), lock_fd)

    def restore(self, bundle_fd: int) -> None:
        """Put the previous files back and remove the others; safe to run again."""
        files_fd = os.open(self.folder / _FILES, _DIR_FLAGS)
        try:
            for name in self.before:
                # Absent: an earlier, interrupted restore already moved it back.
                with contextlib.suppress(FileNotFoundError):
                    os.replace(name, name, src_dir_fd=files_fd, dst_dir_fd=bundle_fd)
        finally:
            os.close(files_fd)
        for name in os.listdir(bundle_fd):
            if name in self.before:
                continue
            with contextlib.suppress(FileNotFoundError):
                info = os.stat(name, dir_fd=bundle_fd, follow_symlinks=False)
                if stat.S_ISREG(info.st_mode):
                    os.unlink(name, dir_fd=bundle_fd)
        os.fsync(bundle_fd)

    def finish(self) -> None:
        """Step 4: the journal first (the decision), then its folder; releases the lock."""
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.folder / _JOURNAL)
                _fsync_dir(self.folder)
            shutil.rmtree(self.folder, ignore_errors=True)
        finally:
            self.release()

    def release(self) -> None:
        """Let go of the lock, keeping the journal (a later recovery decides)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def abandoned(staging: Path) -> Iterator[UndoJournal]:
    """The journals of writers that died (unlocked), each locked for the caller.

    The caller MUST ``finish`` or ``release`` each journal it gets. A journal folder whose
    ``journal.json`` is missing was never complete (the bundle did not change before it
    was) and is removed once unlocked and a minute old.
    """
    for folder in sorted(staging.glob(f"{JOURNAL_PREFIX}*")):
        try:
            lock_fd = os.open(folder / _LOCK, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # being created (the lock comes first) or not a journal folder
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            continue  # a live writer's
        try:
            recorded = json.loads((folder / _JOURNAL).read_text())
            task_id, before = str(recorded["task_id"]), frozenset(map(str, recorded["before"]))
        except FileNotFoundError:
            os.close(lock_fd)
            # Between creating the lock file and taking the lock a writer is young: a
            # folder this old without a journal is a crash before step 2.
            with contextlib.suppress(OSError):
                if time.time() - folder.stat().st_mtime > _INCOMPLETE_SECONDS:
                    shutil.rmtree(folder, ignore_errors=True)
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            os.close(lock_fd)
            logger.error("bundle journal %s is unreadable (%s); left for an operator", folder, exc)
            continue
        yield UndoJournal(folder, task_id, before, lock_fd)


def is_journal(folder: Path) -> bool:
    """Whether a staging entry is a complete journal (never removed as stale)."""
    return folder.name.startswith(JOURNAL_PREFIX) and (folder / _JOURNAL).exists()


def _write_durably(folder: Path, name: str, value: object) -> None:
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with open(fd, "w", encoding="utf-8") as out:
            json.dump(value, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def journal_error(task_id: str, exc: OSError) -> AgataError:
    """An undo that could not complete: the journal stays for the next recovery."""
    return AgataError(
        ErrorCode.UNAVAILABLE,
        f"the bundle of task {task_id} could not be put back after a failed write "
        f"({exc.strerror}); it is put back when the cloud next starts",
    )
