"""Every process a demo or experiment starts, found again and ended.

The task processes (the cloud's server sides, the agent's client sides, the hand-started
second client) each lead a process group of their own and are stopped by whoever started
them. As a last line of defence, a run puts a random mark in its own environment
(:data:`MARK_ENV`), which every process it starts inherits; :func:`kill_marked` ends any
process still carrying the mark (a trigger script, a grandchild that left its group).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

MARK_ENV = "AGATA_RUN_MARK"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def marked_processes(mark: str, *, exclude: int | None = None) -> list[int]:
    """Pids of live processes (zombies left out) whose environment holds ``mark``."""
    needle = f"{MARK_ENV}={mark}".encode()
    exclude = os.getpid() if exclude is None else exclude
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rfind(")") + 2 :].split()[0] == "Z":
                continue
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_marked(mark: str) -> list[int]:
    """SIGKILL every process still carrying ``mark``; returns their pids."""
    pids = marked_processes(mark)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        logger.warning("ended %d process(es) left behind: %s", len(pids), pids)
    return pids


@contextlib.contextmanager
def marked_environment() -> Iterator[str]:
    """Set a fresh mark in ``os.environ`` for the duration; yields it.

    Processes started meanwhile inherit it; on exit the survivors are killed and the
    previous value is restored.
    """
    mark = secrets.token_hex(8)
    previous = os.environ.get(MARK_ENV)
    os.environ[MARK_ENV] = mark
    try:
        yield mark
    finally:
        if previous is None:
            os.environ.pop(MARK_ENV, None)
        else:
            os.environ[MARK_ENV] = previous
        kill_marked(mark)


def cancel_on_signals() -> None:
    """In a coroutine: SIGINT and SIGTERM cancel the current task, so that its cleanup
    (``finally`` blocks, ``async with``) stops every process it started."""
    import asyncio

    current = asyncio.current_task()
    if current is None:
        raise RuntimeError("cancel_on_signals() must be called from a task")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, current.cancel)
