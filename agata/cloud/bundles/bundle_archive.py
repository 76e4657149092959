"""A bundle folder written as one zip (flat, deflated), file by file in pieces."""

from __future__ import annotations

import os
import shutil
import stat
import time
import zipfile
from collections.abc import Iterable
from typing import IO

from agata.cloud.bundles.bundle_rules import CHUNK, READ_FLAGS

__all__ = ["write_zip"]


def write_zip(target: IO[bytes], dir_fd: int | None, names: Iterable[str]) -> None:
    """Write a zip of the files ``names`` of the folder ``dir_fd`` to ``target``: memory
    stays small whatever their size. A name that vanished or is no longer a regular
    file (never followed through a link) is left out. ``dir_fd`` None: an empty zip."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        if dir_fd is None:
            return
        for name in names:
            try:
                fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue  # vanished or replaced by a link since the scan
            with open(fd, "rb") as source:
                current = os.fstat(fd)
                if not stat.S_ISREG(current.st_mode):
                    continue
                member = zipfile.ZipInfo(name, _zip_time(current.st_mtime))
                member.compress_type = zipfile.ZIP_DEFLATED
                member.external_attr = (stat.S_IFREG | 0o644) << 16
                large = current.st_size >= zipfile.ZIP64_LIMIT
                with archive.open(member, "w", force_zip64=large) as entry:
                    shutil.copyfileobj(source, entry, CHUNK)


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    moment = time.localtime(max(mtime, 315705600.0))  # 1980-01-03: zip stores no earlier date
    return (
        moment.tm_year,
        moment.tm_mon,
        moment.tm_mday,
        moment.tm_hour,
        moment.tm_min,
        moment.tm_sec,
    )
