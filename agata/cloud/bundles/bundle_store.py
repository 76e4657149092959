"""The bundle store: each task's files on disk, in ``<root>/task_<task_id>/``.

A bundle is a flat folder of regular files (``server.py``, ``client.py``, modules,
data, trigger scripts). The store is the only code that touches these folders; the
rules its names, sizes and files follow are :mod:`~agata.cloud.bundles.bundle_rules`,
its listings and digests :mod:`~agata.cloud.bundles.bundle_digests`, the zip it serves
:mod:`~agata.cloud.bundles.bundle_archive`, the undo of a half-done write
:mod:`~agata.cloud.bundles.bundle_journal`. It guarantees:

- Writes are all-or-nothing with respect to validation: every name and size is
  checked before anything reaches the bundle folder. Content is streamed into a
  staging folder inside the root (same file system), hashed (SHA-256) and fsynced,
  then each file is moved into place with ``rename`` (atomic: a reader sees the old
  file or the new one, never a torn one). Same-named files are replaced, others kept.
- Symbolic links are never followed: the bundle folder is opened with
  ``O_DIRECTORY | O_NOFOLLOW`` and every file operation is relative to that
  descriptor with ``O_NOFOLLOW``/``lstat`` semantics. A symlink (or any non-regular
  file) where a bundle file should be is refused, not written through.
- Limits (:class:`~agata.cloud.bundles.bundle_rules.BundleLimits`): exceeding any raises
  ``TOO_LARGE`` and writes nothing. Zip uploads are checked on the *uncompressed* bytes
  as they are read, so a zip bomb is stopped at the limit.

Writers, deleters and the archive of one task are serialised within a process by a
per-task lock, so a process MUST hold one store for its root (the cloud node builds one
and hands it to the task manager and the gateway). Deployments with several cloud
replicas should route bundle writes of a task to one of them (or share nothing but the
read path). Needs POSIX ``*at`` system calls (``dir_fd``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Final

from agata.cloud.bundles.bundle_archive import write_zip
from agata.cloud.bundles.bundle_digests import BundleFile, DigestCache, Listed, as_set
from agata.cloud.bundles.bundle_journal import UndoJournal, abandoned, is_journal, journal_error
from agata.cloud.bundles.bundle_rules import (
    BAD_STREAM_ERRORS,
    CHUNK,
    CREATE_FLAGS,
    DIR_FLAGS,
    READ_FLAGS,
    BundleLimits,
    check_archive_member,
    disk_full_is_unavailable,
    is_bundle_file,
    validate_file_name,
    validate_task_id,
)
from agata.errors import AgataError, ErrorCode, invalid, not_found
from agata.fault_points import pause_point

__all__ = ["BundleStore"]

logger = logging.getLogger(__name__)

#: A listing of at most this many files may be checked on an event loop when every
#: digest is cached (:meth:`BundleStore.check_listing` with ``cached_only``).
LOOP_CHECK_FILES = 64

#: Staging folders older than this are left by a crash (a write takes far less).
_STALE_STAGING_SECONDS: Final = 3600


@dataclass(slots=True)
class _Incoming:
    """A file about to be written: its (validated) name, size if known, and content."""

    name: str
    declared_size: int | None
    open: Callable[[], IO[bytes]]
    owned: bool = True  # close the stream once read (False: the caller's stream)


class BundleStore:
    """Task bundles on disk under ``root`` (see the module docstring for guarantees)."""

    def __init__(
        self,
        root: Path,
        max_file_bytes: int = 64 * 1024 * 1024,
        max_bundle_bytes: int = 256 * 1024 * 1024,
        max_files: int = 256,
    ) -> None:
        self.limits = BundleLimits(max_file_bytes, max_bundle_bytes, max_files)
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._staging = self.root / ".staging"
        self._staging.mkdir(mode=0o700, exist_ok=True)
        if not stat.S_ISDIR(os.lstat(self._staging).st_mode):
            raise invalid(f"{self._staging} must be a folder, not a link or a file")
        self._clean_stale_staging()
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._digests = DigestCache()

    # --- paths and locks ----------------------------------------------------------

    def task_dir(self, task_id: str) -> Path:
        """The bundle folder of a task: ``root / f"task_{task_id}"``."""
        return self.root / f"task_{validate_task_id(task_id)}"

    def _lock(self, task_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(task_id, threading.Lock())

    @contextmanager
    def _open_dir(self, task_id: str, *, create: bool = False) -> Iterator[int | None]:
        """A descriptor of the task's folder (never through a symlink); None if absent."""
        path = self.task_dir(task_id)
        if create:
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                pass
        try:
            fd = os.open(path, DIR_FLAGS)
        except FileNotFoundError:
            yield None
            return
        except OSError:  # ELOOP (a symlink) or ENOTDIR (a file)
            raise invalid(
                f"the bundle folder of task {task_id} is not a real folder; refusing to use it"
            ) from None
        try:
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _scan(dir_fd: int | None) -> dict[str, os.stat_result]:
        """Every entry of a folder, stat'ed without following links."""
        if dir_fd is None:
            return {}
        entries = {}
        for name in os.listdir(dir_fd):
            try:
                entries[name] = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
        return entries

    # --- reading --------------------------------------------------------------------

    def list_files(self, task_id: str) -> list[BundleFile]:
        """The bundle's regular files, sorted by name; empty if the task has no bundle."""
        files = self._list_files(task_id, cached_only=False)
        assert files is not None
        return files

    def _list_files(self, task_id: str, *, cached_only: bool) -> list[BundleFile] | None:
        """:meth:`list_files`; with ``cached_only`` None as soon as a file would have to
        be read (its digest is not cached for it as it is)."""
        with self._open_dir(task_id) as dir_fd:
            if dir_fd is None:
                return []
            files = []
            for name, info in sorted(self._scan(dir_fd).items()):
                if not is_bundle_file(task_id, name, info):
                    continue
                if cached_only:
                    digest = self._digests.cached(task_id, name, info)
                    if digest is None:
                        return None
                else:
                    digest = self._digests.digest(task_id, dir_fd, name, info)
                if digest is not None:
                    files.append(BundleFile(name, info.st_size, digest))
            return files

    def open_file(self, task_id: str, name: str) -> BinaryIO:
        """Open one bundle file for reading (a regular file, never through a link)."""
        name = validate_file_name(name)
        with self._open_dir(task_id) as dir_fd:
            if dir_fd is None:
                raise not_found(f"task {task_id} has no bundle")
            try:
                fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                raise not_found(f"task {task_id} has no file {name!r}") from None
            except OSError:  # ELOOP: a symlink
                raise invalid(f"{name!r} of task {task_id} is not a regular file") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise invalid(f"{name!r} of task {task_id} is not a regular file")
        return open(fd, "rb")  # the caller owns (and closes) the file

    def archive(self, task_id: str) -> bytes:
        """The whole bundle as a zip (flat, deflated); an empty zip if there is none."""
        buffer = io.BytesIO()
        self.write_archive(task_id, buffer)
        return buffer.getvalue()

    def write_archive(self, task_id: str, target: IO[bytes]) -> None:
        """Write the zip of :meth:`archive` to ``target`` (a file open for writing, e.g. a
        temporary file), reading each bundle file in pieces: memory stays small whatever
        the bundle's size. Blocking: call it off the event loop."""
        validate_task_id(task_id)
        with self._lock(task_id), self._open_dir(task_id) as dir_fd:
            entries = sorted(self._scan(dir_fd).items())
            names = [name for name, info in entries if is_bundle_file(task_id, name, info)]
            write_zip(target, dir_fd, names)

    # --- writing --------------------------------------------------------------------

    def write_files(
        self, task_id: str, files: Sequence[tuple[str, bytes | BinaryIO]]
    ) -> list[BundleFile]:
        """Add or replace files of the bundle; all-or-nothing on validation and limits.

        Each item is ``(name, content)`` where content is bytes or a binary file
        object read to its end. Returns the written files, in the given order.
        """
        validate_task_id(task_id)
        incoming = []
        for item in files:
            if not isinstance(item, tuple) or len(item) != 2:
                raise invalid("each file must be given as (name, content)")
            raw_name, content = item
            name = validate_file_name(raw_name)
            if isinstance(content, bytes | bytearray | memoryview):
                data = bytes(content)
                incoming.append(_Incoming(name, len(data), functools.partial(io.BytesIO, data)))
            elif callable(getattr(content, "read", None)):
                incoming.append(_Incoming(name, None, functools.partial(_same, content), False))
            else:
                raise invalid(f"the content of {name!r} must be bytes or a binary file")
        return self._commit(task_id, incoming)

    def extract_archive(self, task_id: str, zip_bytes: bytes | BinaryIO) -> list[BundleFile]:
        """Add or replace files from a zip of plain files (no folders, no links).

        ``zip_bytes`` is the archive, or a seekable binary file holding it (read from
        its start, never whole into memory). Every member is checked before anything is
        written; sizes are enforced on the uncompressed bytes while reading. Returns the
        written files in archive order.
        """
        validate_task_id(task_id)
        source: IO[bytes]
        if isinstance(zip_bytes, bytes | bytearray | memoryview):
            source, size = io.BytesIO(zip_bytes), len(zip_bytes)
        elif callable(getattr(zip_bytes, "seek", None)) and callable(
            getattr(zip_bytes, "read", None)
        ):
            source, size = zip_bytes, zip_bytes.seek(0, os.SEEK_END)
            zip_bytes.seek(0)
        else:
            raise invalid("the archive must be bytes or a seekable binary file")
        self.limits.check_archive(size, 0)
        try:
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, *BAD_STREAM_ERRORS, OSError):
            raise invalid("the upload is not a valid zip archive") from None
        with archive:
            members = archive.infolist()
            self.limits.check_archive(size, len(members))
            incoming = [_member(archive, member) for member in members]
            return self._commit(task_id, incoming)

    def _commit(self, task_id: str, incoming: list[_Incoming]) -> list[BundleFile]:
        with disk_full_is_unavailable(task_id):
            return self._commit_files(task_id, incoming)

    def _commit_files(self, task_id: str, incoming: list[_Incoming]) -> list[BundleFile]:
        """Check, stage and move ``incoming`` into the task's bundle folder."""
        if not incoming:
            return []
        names = [item.name for item in incoming]
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise invalid(f"file {twice!r} is given twice")
        declared = {item.name: item.declared_size or 0 for item in incoming}
        for name, size in declared.items():
            self.limits.check_file_size(name, size)
        with self._lock(task_id), self._open_dir(task_id) as dir_fd:
            budget = self.limits.check_bundle(task_id, self._scan(dir_fd), declared)

        staging = Path(tempfile.mkdtemp(prefix="upload-", dir=self._staging))
        try:
            staging_fd = os.open(staging, DIR_FLAGS)
            try:
                staged = {}
                for item in incoming:
                    staged[item.name] = self._stage(staging_fd, item, budget)
                    budget -= staged[item.name][0]
                sizes = {name: size for name, (size, _) in staged.items()}
                with self._lock(task_id):
                    with self._open_dir(task_id) as dir_fd:
                        self.limits.check_bundle(task_id, self._scan(dir_fd), sizes)
                    with self._open_dir(task_id, create=True) as dir_fd:
                        if dir_fd is None:  # removed between mkdir and open
                            raise AgataError(ErrorCode.CONFLICT, f"task {task_id} was deleted")
                        return self._move_into_place(task_id, staging_fd, dir_fd, staged)
            finally:
                os.close(staging_fd)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _stage(self, staging_fd: int, item: _Incoming, budget: int) -> tuple[int, str]:
        """Copy one file into the staging folder, enforcing the limits; (size, sha256)."""
        digest = hashlib.sha256()
        size = 0
        fd = os.open(item.name, CREATE_FLAGS, 0o644, dir_fd=staging_fd)
        with open(fd, "wb") as target:
            try:
                source = item.open()
            except BAD_STREAM_ERRORS as exc:
                raise invalid(f"could not read {item.name!r}: {exc}") from None
            try:
                while True:
                    try:
                        chunk = source.read(CHUNK)
                    except BAD_STREAM_ERRORS as exc:
                        raise invalid(f"could not read {item.name!r}: {exc}") from None
                    if not chunk:
                        break
                    if not isinstance(chunk, bytes | bytearray):
                        raise invalid(f"the content of {item.name!r} must be binary")
                    size += len(chunk)
                    self.limits.check_file_size(item.name, size)
                    if size > budget:
                        raise self.limits.bundle_too_large()
                    digest.update(chunk)
                    target.write(chunk)
            finally:
                if item.owned:
                    source.close()
            target.flush()
            os.fsync(target.fileno())
        return size, digest.hexdigest()

    def _move_into_place(
        self, task_id: str, staging_fd: int, dir_fd: int, staged: dict[str, tuple[int, str]]
    ) -> list[BundleFile]:
        written: list[BundleFile] = []
        for name, (size, sha256) in staged.items():
            if written:
                pause_point("bundle-file-moved")  # some files in place, others not yet
            # rename(2) replaces the directory entry itself: it never follows a link
            os.replace(name, name, src_dir_fd=staging_fd, dst_dir_fd=dir_fd)
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            self._digests.remember(task_id, name, info, sha256)
            written.append(BundleFile(name, size, sha256))
        os.fsync(dir_fd)
        logger.info("bundle of task %s: wrote %d file(s)", task_id, len(written))
        pause_point("bundle-written")  # files in place, listing not recorded
        return written

    @contextmanager
    def undo_on_error(self, task_id: str) -> Iterator[None]:
        """Make "write the files, record their listing" one recoverable step.

        For a writer that records the new listing elsewhere after writing the files (the
        gateway records it in the store): files on disk must never disagree with the
        recorded listing, or devices would download files whose SHA-256 is not the one
        they were given. The previous files are kept in an undo journal
        (:mod:`agata.cloud.bundles.bundle_journal`, hard links, no copy) while the block runs. If
        the block raises they are put back; if the process dies inside the block,
        :meth:`recover` (run when the cloud starts) keeps the new files when the store
        holds their listing and puts the old ones back when it does not.
        """
        validate_task_id(task_id)
        with disk_full_is_unavailable(task_id):
            with self._lock(task_id), self._open_dir(task_id) as dir_fd:
                journal = UndoJournal.create(self._staging, task_id, dir_fd)
        try:
            pause_point("bundle-journaled")
            try:
                yield
            except BaseException:
                self._put_back(journal)
                raise
            pause_point("bundle-recorded")
            journal.finish()
        finally:
            journal.release()

    @asynccontextmanager
    async def undo_on_error_async(self, task_id: str) -> AsyncIterator[None]:
        """:meth:`undo_on_error` for ``async def`` code: the journal is made, put back
        and dropped in a worker thread, so the event loop never waits on the disk."""
        undo = self.undo_on_error(task_id)
        await asyncio.to_thread(undo.__enter__)
        try:
            yield
        except BaseException as exc:
            if not await asyncio.to_thread(undo.__exit__, type(exc), exc, exc.__traceback__):
                raise
        else:
            await asyncio.to_thread(undo.__exit__, None, None, None)

    def _put_back(self, journal: UndoJournal) -> None:
        """Undo a failed write; if that fails too, the journal stays for :meth:`recover`."""
        try:
            with self._lock(journal.task_id):
                self._restore(journal)
        except OSError as exc:
            logger.error(
                "bundle of task %s not put back after a failed write: %s; the journal %s "
                "is kept and applied when the cloud next starts",
                journal.task_id,
                exc,
                journal.folder,
            )
            journal.release()
            raise journal_error(journal.task_id, exc) from None
        journal.finish()
        logger.warning(
            "bundle of task %s put back as it was before the failed write", journal.task_id
        )

    def _restore(self, journal: UndoJournal) -> None:
        with self._open_dir(journal.task_id, create=bool(journal.before)) as dir_fd:
            if dir_fd is not None:
                journal.restore(dir_fd)
        self._digests.forget(journal.task_id)

    def recover(self, recorded: Callable[[str], Sequence[Listed] | None]) -> dict[str, str]:
        """Finish or undo the bundle writes that a dead process left half done.

        ``recorded(task_id)`` returns the listing the store holds (``None``: the task no
        longer exists); it may raise (the store unreachable), which leaves that journal
        for a later call. A bundle equal to its recorded listing keeps the new files;
        any other is put back as it was before the write. Journals of live writers (in
        any process) are not touched. Returns ``{task_id: "kept" | "put back" | "dropped"}``.
        """
        outcomes: dict[str, str] = {}
        for journal in abandoned(self._staging):
            task_id = journal.task_id
            try:
                validate_task_id(task_id)
                listing = recorded(task_id)
                with self._lock(task_id):
                    if listing is None:
                        outcome = "dropped"  # the task is gone; nothing to put back
                    elif as_set(self.list_files(task_id)) == as_set(listing):
                        outcome = "kept"
                    else:
                        self._restore(journal)
                        outcome = "put back"
            except (AgataError, OSError) as exc:
                journal.release()
                logger.error(
                    "bundle of task %s: an interrupted write is not recovered yet: %s",
                    task_id,
                    exc,
                )
                continue
            journal.finish()
            outcomes[task_id] = outcome
            logger.warning(
                "bundle of task %s: a write interrupted by a crash was %s (%s)",
                task_id,
                "completed" if outcome == "kept" else outcome,
                "the store holds its listing" if outcome == "kept" else "the listing was not",
            )
        return outcomes

    def check_listing(
        self, task_id: str, listing: Sequence[Listed], *, cached_only: bool = False
    ) -> bool:
        """Raise ``CONFLICT`` with the reason unless the bundle holds exactly ``listing``.
        Returns True once checked; with ``cached_only`` False instead when a file would
        have to be hashed or the listing holds more than :data:`LOOP_CHECK_FILES` files
        (the check then belongs in a thread), so that a start may check an unchanged
        small bundle on its event loop (a stat call per file).

        Every listed file must be on disk with its listed size and SHA-256 (what devices
        download and verify). Files on disk that are not listed are only logged: devices
        never fetch them, and a server side that writes into its folder (its working
        directory) must still start again. Digests come from the cache while a file's
        inode, size, mtime and ctime are unchanged, so a file is hashed once after each
        change: any write behind the listing changes its ctime and is caught.
        """
        if cached_only and len(listing) > LOOP_CHECK_FILES:
            return False
        files = self._list_files(task_id, cached_only=cached_only)
        if files is None:
            return False
        on_disk = {f.name: f for f in files}
        problems = []
        for item in listing:
            found = on_disk.pop(item.name, None)
            if found is None:
                problems.append(f"{item.name!r} is missing")
            elif (found.size, found.sha256) != (item.size, item.sha256):
                problems.append(
                    f"{item.name!r} has {found.size} bytes, SHA-256 {found.sha256[:12]}…, "
                    f"where the listing says {item.size} bytes, {item.sha256[:12]}…"
                )
        if on_disk:
            logger.warning(
                "bundle of task %s: %d file(s) on disk not in its listing (devices do not "
                "get them): %s",
                task_id,
                len(on_disk),
                ", ".join(sorted(on_disk)[:5]),
            )
        if problems:
            shown = "; ".join(problems[:5]) + ("; …" if len(problems) > 5 else "")
            raise AgataError(
                ErrorCode.CONFLICT,
                f"the bundle of task {task_id} does not match its listing ({shown}); "
                "upload the bundle files again",
            )
        return True

    # --- deleting -------------------------------------------------------------------

    def delete(self, task_id: str) -> bool:
        """Remove the task's bundle; False if it had none. Never follows links."""
        path = self.task_dir(task_id)
        with self._lock(task_id):
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                return False
            self._digests.forget(task_id)
            if not stat.S_ISDIR(info.st_mode):  # a link or a stray file: remove the entry
                os.unlink(path)
                return True
            trash = Path(tempfile.mkdtemp(prefix="delete-", dir=self._staging))
            os.replace(path, trash / "bundle")  # the folder disappears at once
        shutil.rmtree(trash, ignore_errors=True)  # does not follow links inside
        logger.info("bundle of task %s deleted", task_id)
        return True

    # --- helpers --------------------------------------------------------------------

    def _clean_stale_staging(self) -> None:
        """Remove staging folders left by a crash (old enough not to be in use)."""
        cutoff = time.time() - _STALE_STAGING_SECONDS
        for entry in self._staging.iterdir():
            if is_journal(entry):
                continue  # an interrupted write: recover() decides, never the clock
            try:
                if entry.lstat().st_mtime < cutoff:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()
            except OSError:
                continue


def _member(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> _Incoming:
    """A zip member to write, checked (:func:`check_archive_member`) before anything is."""
    name = check_archive_member(member)
    return _Incoming(name, member.file_size, lambda: archive.open(member))


def _same(stream: BinaryIO) -> IO[bytes]:
    return stream
