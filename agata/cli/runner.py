"""Running a long-lived command: its event loop and what SIGINT/SIGTERM do.

A leaf module: command modules import it, it imports no command module.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["STOP_SIGNALS", "on_stop_signals", "run_fast"]

T = TypeVar("T")

#: The signals that ask a long-lived command to stop cleanly.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def on_stop_signals(stop: Callable[[], object]) -> None:
    """Call ``stop()`` on SIGINT or SIGTERM, from inside the running event loop.

    MUST be called from a coroutine of the loop that should stop (the handler runs in
    that loop, so ``stop`` may set an ``asyncio.Event`` or cancel tasks). The command
    then finishes its own shutdown; a second signal calls ``stop`` again.
    """
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)


def run_fast(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on uvloop when it is installed (less CPU per request), else on
    asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)
