"""The rules a bundle's names, sizes and files must follow (no disk I/O here but a check).

- Names follow the one rule that agents apply too
  (:func:`agata.protocol.bundle_names.check_file_name`, here :func:`validate_file_name`):
  plain, portable, not hidden, no separators, no control or invisible characters, no
  lookalikes of ``/``, ``\\`` or ``.``; task ids match ``[A-Za-z0-9_-]{1,64}``
  (:func:`validate_task_id`).
- Limits (:class:`BundleLimits`): ``max_file_bytes`` per file, ``max_bundle_bytes`` for
  the whole bundle after a write, ``max_files`` in the bundle after a write; exceeding
  any of them is ``TOO_LARGE`` (:func:`too_large`).
- A zip upload holds plain files only (:func:`check_archive_member`): no folders, links,
  devices or encrypted members.
- Symbolic links are never followed: folders are opened with :data:`DIR_FLAGS`, files
  with :data:`READ_FLAGS` / :data:`CREATE_FLAGS` (``O_NOFOLLOW``), relative to the
  folder's descriptor; an entry that is not a regular file is refused, not written
  through.
- A full disk (or quota) is ``UNAVAILABLE`` for the caller, not an internal error
  (:func:`disk_full_is_unavailable`).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from agata.errors import AgataError, ErrorCode, invalid
from agata.protocol.bundle_names import MAX_NAME_BYTES
from agata.protocol.bundle_names import check_file_name as validate_file_name
from agata.protocol.fields import TASK_ID_PATTERN

__all__ = [
    "BAD_STREAM_ERRORS",
    "CHUNK",
    "CREATE_FLAGS",
    "DIR_FLAGS",
    "MAX_NAME_BYTES",
    "READ_FLAGS",
    "BundleLimits",
    "check_archive_member",
    "disk_full_is_unavailable",
    "is_bundle_file",
    "too_large",
    "validate_file_name",
    "validate_task_id",
]

logger = logging.getLogger(__name__)

#: Bytes read or written at a time.
CHUNK: Final = 1 << 20
DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CREATE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: What reading a (zip member) stream may raise when the upload itself is bad.
BAD_STREAM_ERRORS: Final = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    ValueError,
    RuntimeError,
)

_TASK_ID: Final = re.compile(TASK_ID_PATTERN)


def too_large(message: str) -> AgataError:
    return AgataError(ErrorCode.TOO_LARGE, message)


def validate_task_id(task_id: str) -> str:
    """Return ``task_id`` if it matches :data:`~agata.protocol.fields.TASK_ID_PATTERN`;
    else INVALID_ARGUMENT."""
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        shown = ascii(task_id[:80]) if isinstance(task_id, str) else type(task_id).__name__
        raise invalid(f"task id {shown} is not valid: use 1 to 64 letters, digits, '_' or '-'")
    return task_id


@contextmanager
def disk_full_is_unavailable(task_id: str) -> Iterator[None]:
    """A full disk (or quota) is UNAVAILABLE for the caller, not an internal error."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        logger.warning("bundle of task %s not written: %s", task_id, exc.strerror)
        raise AgataError(
            ErrorCode.UNAVAILABLE,
            "the disk of the bundle store is full; free some disk space",
        ) from None


def check_archive_member(member: zipfile.ZipInfo) -> str:
    """The (valid) name of a zip member that is a plain file; INVALID_ARGUMENT with the
    reason for a folder, a link, anything but a regular file, or an encrypted member."""
    shown = ascii(member.orig_filename[:80])
    if "\x00" in member.orig_filename:
        raise invalid(f"archive member {shown} has a NUL byte in its name")
    if member.is_dir() or member.filename.endswith(("/", "\\")):
        raise invalid(
            f"archive member {shown} is a folder; put the files at the top of the archive"
        )
    kind = stat.S_IFMT(member.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise invalid(f"archive member {shown} is a symbolic link, which is not allowed")
    if kind not in (0, stat.S_IFREG):
        raise invalid(f"archive member {shown} is not a regular file")
    if member.flag_bits & 0x1:
        raise invalid(f"archive member {shown} is encrypted, which is not supported")
    return validate_file_name(member.filename)


@dataclass(frozen=True, slots=True)
class BundleLimits:
    """How large a bundle and its files may be; every value a positive integer."""

    max_file_bytes: int = 64 * 1024 * 1024
    max_bundle_bytes: int = 256 * 1024 * 1024
    max_files: int = 256

    def __post_init__(self) -> None:
        for label in ("max_file_bytes", "max_bundle_bytes", "max_files"):
            value = getattr(self, label)
            if not isinstance(value, int) or value < 1:
                raise invalid(f"{label} must be a positive integer")

    def check_file_size(self, name: str, size: int) -> None:
        """TOO_LARGE if one file of ``size`` bytes is over the limit."""
        if size > self.max_file_bytes:
            raise too_large(
                f"file {name!r} is larger than the limit of {self.max_file_bytes} bytes"
            )

    def check_archive(self, archive_bytes: int, members: int) -> None:
        """TOO_LARGE for a zip that cannot fit whatever it holds (compressed data is never
        much larger than its content: headers only) or that holds too many files."""
        if archive_bytes > self.max_bundle_bytes + self.max_files * 1024 + 65536:
            raise too_large(
                f"the archive is larger than the limit of {self.max_bundle_bytes} bytes"
            )
        if members > self.max_files:
            raise too_large(
                f"the archive holds {members} files; a bundle may hold {self.max_files}"
            )

    def check_bundle(
        self, task_id: str, existing: dict[str, os.stat_result], new_sizes: dict[str, int]
    ) -> int:
        """Refuse non-regular targets and limits exceeded by writing ``new_sizes`` over
        ``existing`` (the folder as scanned); return the bytes left for the new files."""
        for name in new_sizes:
            info = existing.get(name)
            if info is not None and not stat.S_ISREG(info.st_mode):
                raise invalid(
                    f"{name!r} of task {task_id} exists and is not a regular file "
                    "(a link or a folder); refusing to replace it"
                )
        kept = {n: i for n, i in existing.items() if n not in new_sizes and stat.S_ISREG(i.st_mode)}
        count = len(kept) + len(new_sizes)
        if count > self.max_files:
            raise too_large(f"the bundle would hold {count} files; the limit is {self.max_files}")
        budget = self.max_bundle_bytes - sum(info.st_size for info in kept.values())
        if sum(new_sizes.values()) > budget:
            raise self.bundle_too_large()
        return budget

    def bundle_too_large(self) -> AgataError:
        return too_large(
            f"the bundle would be larger than the limit of {self.max_bundle_bytes} bytes"
        )


def is_bundle_file(task_id: str, name: str, info: os.stat_result) -> bool:
    """Whether a folder entry counts as a bundle file: a regular file with a valid name
    (anything else is logged and ignored)."""
    if not stat.S_ISREG(info.st_mode):
        logger.warning("bundle of task %s: ignoring %r, not a regular file", task_id, name)
        return False
    try:
        valid = validate_file_name(name) == name
    except AgataError:
        valid = False
    if not valid:
        logger.warning("bundle of task %s: ignoring %r, not a valid name", task_id, name)
    return valid
