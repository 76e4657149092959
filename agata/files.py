"""Files and folders of AGATA's own: written whole, readable by their owner only.

Modes are set explicitly (``chmod``), not left to the umask: the data folder is 0700,
databases, tokens and credentials 0600, whatever the umask of whoever started AGATA.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_private_file(path: Path, text: str, *, durable: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename), readable
    by its owner only (0600): a reader sees the whole old file, the whole new one, or
    none. The folder is created when missing. Without ``durable`` the fsync is left
    out (a few milliseconds here): for a record that a power loss makes moot anyway."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        if durable:
            os.fsync(out.fileno())
    os.chmod(temporary, 0o600)  # whatever the umask said
    os.replace(temporary, path)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) and make it 0700, also when it existed:
    only its owner may list or enter it."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def make_private_file(path: Path) -> None:
    """Make sure ``path`` exists and is 0600 (an empty file is created when missing),
    e.g. a database file before the database library opens it with the umask's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
