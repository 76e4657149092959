"""A check that no package code calls the synchronous store on an event loop's thread.

The store's methods block (a SQLite write waits up to ``busy_timeout`` for another
writer; a PostgreSQL query waits on the network). Called from ``async def`` code they
would stall every request the loop serves, so async code goes through
:class:`agata.store.async_store.AsyncStore`, which runs them in worker threads.

In *strict* mode (on when the environment variable ``AGATA_STORE_STRICT=1`` is set at
import, or after :func:`set_strict`; the cloud tests turn it on for every test and for
the processes they start) every store transaction checks the thread it runs on: if an
event loop runs in that thread and the call comes from package code (a module under
``agata.`` outside ``agata.store``), it fails with ``INTERNAL`` naming the operation and
the caller. Test code may still prepare records synchronously. Off (the default) the
check costs one attribute read per transaction.
"""

from __future__ import annotations

import asyncio
import os
import sys

from agata.errors import AgataError, ErrorCode

__all__ = ["STRICT_ENV", "check_not_on_loop", "is_strict", "set_strict"]

STRICT_ENV = "AGATA_STORE_STRICT"
"""Environment variable that turns strict mode on in a process (``1``)."""

_strict = os.environ.get(STRICT_ENV, "").strip() == "1"

#: Modules a store call passes through between its caller and the transaction.
_PLUMBING = ("agata.store", "contextlib")


def set_strict(enabled: bool) -> None:
    """Turn strict mode on or off in this process."""
    global _strict
    _strict = enabled


def is_strict() -> bool:
    return _strict


def check_not_on_loop(operation: str) -> None:
    """In strict mode, fail if package code calls the store on an event loop's thread."""
    if not _strict:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # a worker thread, or synchronous code (the CLI): fine
    frame = sys._getframe(1)
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith(_PLUMBING):
        frame = frame.f_back  # type: ignore[assignment]
    caller = "" if frame is None else str(frame.f_globals.get("__name__", ""))
    if caller.startswith("agata."):
        raise AgataError(
            ErrorCode.INTERNAL,
            f"store.{operation} called on the event loop's thread by {caller} "
            f"(line {frame.f_lineno}); call it through AsyncStore (docs/store.md)",
        )
