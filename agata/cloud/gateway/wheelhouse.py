"""The cloud's wheelhouse: a folder of wheels served to devices (``--wheelhouse DIR``).

A device without internet installs a task's dependencies from it (the agent mirrors it,
:mod:`agata.edge.wheelhouse`). Routes (a device credential or an operator token; a
device of the original system has neither and gets 401):

- ``GET /wheelhouse/`` -- ``{"wheels": [{"name", "size", "sha256"}, ...]}``, sorted by
  name; 404 when the cloud serves no wheelhouse;
- ``GET /wheelhouse/{name}`` -- one file, streamed from disk like a bundle download
  (:class:`~agata.cloud.gateway.downloads.FileStream`, counted against the downloader's
  ``max_downloads``).

Only regular files directly in the folder whose names look like distributions
(:data:`~agata.protocol.wheelhouse.WHEEL_NAME`: ``*.whl`` or ``*.tar.gz``, no path
separators, no leading dot) are
listed or served; a symlink, a subfolder or any other name is neither (404). SHA-256
sums are computed in a worker thread and remembered while a file's size and mtime stay
the same, so a listing does not re-read the folder's wheels each time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from fastapi import APIRouter, Depends
from starlette.responses import Response

from agata.cloud.gateway.auth import Principal
from agata.cloud.gateway.downloads import DownloadSlots, FileStream, too_many_downloads
from agata.errors import AgataError, ErrorCode
from agata.protocol.wheelhouse import WHEEL_NAME, WheelhouseListing

__all__ = ["Wheelhouse", "wheelhouse_router"]

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Wheelhouse:
    """The served folder (None: this cloud serves none)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._sums: dict[str, tuple[int, int, str]] = {}  # name -> (size, mtime_ns, sha)

    def _folder(self) -> Path:
        if self.folder is None:
            raise AgataError(ErrorCode.NOT_FOUND, "this cloud serves no wheelhouse")
        return self.folder

    def _scan(self) -> list[dict[str, Any]]:
        folder = self._folder()
        wheels: list[dict[str, Any]] = []
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as exc:
            raise AgataError(
                ErrorCode.UNAVAILABLE, f"the wheelhouse cannot be read: {exc.strerror}"
            ) from exc
        seen: set[str] = set()
        for entry in entries:
            if not WHEEL_NAME.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
                known = self._sums.get(entry.name)
                if known is not None and known[:2] == (info.st_size, info.st_mtime_ns):
                    sha = known[2]
                else:
                    sha = _sha256(Path(entry.path))
                    self._sums[entry.name] = (info.st_size, info.st_mtime_ns, sha)
            except OSError as exc:  # removed or unreadable meanwhile: not listed
                logger.warning("wheelhouse: %s left out: %s", entry.name, exc)
                continue
            seen.add(entry.name)
            wheels.append({"name": entry.name, "size": info.st_size, "sha256": sha})
        for gone in set(self._sums) - seen:  # two listings may run at once: pop
            self._sums.pop(gone, None)
        return wheels

    async def listing(self) -> dict[str, Any]:
        """The served files with size and SHA-256 (blocking work in a worker thread)."""
        return {"wheels": await anyio.to_thread.run_sync(self._scan)}

    def open(self, name: str) -> BinaryIO:
        """One served file, open for reading; NOT_FOUND for any other name."""
        folder = self._folder()
        missing = AgataError(ErrorCode.NOT_FOUND, f"the wheelhouse has no file {name!r}")
        if not WHEEL_NAME.fullmatch(name):
            raise missing
        try:
            fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            raise missing from None
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            regular = False
        if not regular:
            os.close(fd)
            raise missing
        return os.fdopen(fd, "rb")


def wheelhouse_router(
    wheelhouse: Wheelhouse,
    who: Callable[..., Awaitable[Principal]],
    slots: DownloadSlots,
    responses: dict[int | str, dict[str, Any]],
) -> APIRouter:
    """The wheelhouse's routes; ``who`` is the gated dependency that admits devices and
    operators only, ``slots`` the gateway's download slots."""
    router = APIRouter(tags=["files"])

    @router.get("/wheelhouse/", response_model=WheelhouseListing, responses=responses)
    async def wheelhouse_listing(_who: Principal = Depends(who)) -> dict[str, Any]:
        """The cloud's wheels: name, size and SHA-256 of each (404: none served)."""
        return await wheelhouse.listing()

    @router.get("/wheelhouse/{name}", responses=responses)
    async def wheelhouse_file(name: str, principal: Principal = Depends(who)) -> Response:
        """One wheel, streamed from disk (429 while this downloader runs
        ``max_downloads``)."""
        handle = wheelhouse.open(name)
        release = slots.take(f"{principal.kind}:{principal.name}")
        if release is None:
            handle.close()
            return too_many_downloads(slots.limit)
        return FileStream(handle, release=release)

    return router
