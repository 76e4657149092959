"""Bundle downloads streamed from disk, a bounded number at once per downloader.

A download used to be read into memory whole before it was sent: 24 parallel downloads
of a 48 MiB file by one device took the cloud from 74 MB to 1.2 GB, and the reads, made
on the event loop, held every other request (``/healthz`` 1.5 s). Now:

- :class:`FileStream` sends an open file in :data:`CHUNK_BYTES` pieces, each read in a
  worker thread, at the pace the client takes them (uvicorn's flow control); it stops
  when the client leaves, and always closes the file and gives back its slot;
  :func:`spooled_stream` does the same with what a function writes (the bundle zip),
  written to a temporary file in a worker thread first;
- :class:`DownloadSlots` counts the downloads each downloader (a device, an operator
  token, or for task passwords a client address) is running; past its limit a new one
  is answered 429 with ``Retry-After`` (:func:`too_many_downloads`).

What one download costs is then one chunk of memory and one open file, and what one
downloader can hold is ``limit`` of them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from typing import IO, BinaryIO

import anyio
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

#: Bytes read from disk and sent at a time.
CHUNK_BYTES = 256 * 1024
#: Seconds a refused downloader is told to wait (``Retry-After``).
RETRY_AFTER_SECONDS = 1


class DownloadSlots:
    """At most ``limit`` downloads at once per key."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._running: dict[str, int] = {}

    def take(self, key: str) -> Callable[[], None] | None:
        """Take a slot for ``key``: the function that gives it back (call it once), or
        None when ``key`` already runs ``limit`` downloads."""
        running = self._running.get(key, 0)
        if running >= self.limit:
            return None
        self._running[key] = running + 1
        given = False

        def give_back() -> None:
            nonlocal given
            if given:
                return
            given = True
            left = self._running.get(key, 1) - 1
            if left > 0:
                self._running[key] = left
            else:
                self._running.pop(key, None)

        return give_back

    def running(self, key: str) -> int:
        return self._running.get(key, 0)


def too_many_downloads(limit: int) -> JSONResponse:
    """The 429 of a downloader already running ``limit`` downloads."""
    return JSONResponse(
        {"detail": f"{limit} downloads of this device are running; retry when one ended"},
        status_code=429,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _chunks(file: BinaryIO, size: int) -> AsyncIterator[bytes]:
    left = size
    while left > 0:
        chunk = await anyio.to_thread.run_sync(file.read, min(CHUNK_BYTES, left))
        if not chunk:
            return  # the file shrank: the response is then shorter than announced
        left -= len(chunk)
        yield chunk


class FileStream(StreamingResponse):
    """Sends ``file`` (open for reading, at its start; owned by the response from now
    on) with its size as ``Content-Length``. When the response ends -- sent, failed, or
    the client gone -- the file is closed and ``release`` is called."""

    def __init__(
        self,
        file: BinaryIO,
        *,
        release: Callable[[], None],
        media_type: str = "application/octet-stream",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.file = file
        self.release = release
        size = os.fstat(file.fileno()).st_size - file.tell()
        super().__init__(
            _chunks(file, size),
            media_type=media_type,
            headers={**(headers or {}), "Content-Length": str(size)},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.file.close()
            self.release()


async def spooled_stream(
    write: Callable[[IO[bytes]], None],
    *,
    release: Callable[[], None],
    media_type: str = "application/octet-stream",
) -> FileStream:
    """The :class:`FileStream` of what ``write`` (blocking) writes to a temporary file,
    run in a worker thread; if it fails, the file is removed, ``release`` called and
    the error raised."""
    try:
        spool = tempfile.TemporaryFile()
        try:
            await anyio.to_thread.run_sync(write, spool)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
    except BaseException:
        release()
        raise
    return FileStream(spool, release=release, media_type=media_type)
