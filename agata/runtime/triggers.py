"""Trigger scripts: a task asks for ``<trigger_name>.py`` of its bundle to be run.

A :class:`TriggerRunner` belongs to one :class:`~agata.runtime.supervisor.TaskProcess`.
It validates each request (a plain identifier naming a file inside the bundle, within the
limit of scripts running at once), runs the script as its own supervised, short-lived
process, stops it after a timeout, and reports refusals and failures as notes — a trigger
never fails the task that asked for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from agata.errors import AgataError
from agata.runtime.messages import Trigger

__all__ = ["TriggerRunner"]

logger = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class _Outcome(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def state(self) -> str: ...

    @property
    def reason(self) -> str: ...


class _Supervised(Protocol):
    """What the runner needs of a supervised process (a ``TaskProcess``)."""

    async def start(self) -> None: ...

    async def wait(self) -> _Outcome: ...

    async def stop(self, grace: float | None = None) -> _Outcome: ...


ProcessFactory = Callable[[str, Sequence[str]], _Supervised]
"""Makes the supervised process for ``(script file name, arguments)``."""


class TriggerRunner:
    """Runs the trigger scripts of one bundle.

    Args:
        bundle_dir: where ``<trigger_name>.py`` must be.
        make_process: builds the supervised process of one script.
        note: awaited with a line for the owner when a trigger fails to start or fails.
        timeout: a script running longer is stopped.
        max_running: scripts allowed at once; 0 refuses every trigger.
        name: for logs.
    """

    def __init__(
        self,
        bundle_dir: Path,
        make_process: ProcessFactory,
        note: Callable[[str], Awaitable[None]],
        *,
        timeout: float,
        max_running: int,
        name: str,
    ) -> None:
        self._bundle_dir = bundle_dir
        self._make_process = make_process
        self._note = note
        self._timeout = timeout
        self._max_running = max_running
        self._name = name
        self._running: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self, trigger: Trigger) -> str | None:
        """Start the script in the background; returns why it was refused, or None."""
        problem = self._refusal(trigger.trigger_name)
        if problem is not None:
            return problem
        process = self._make_process(f"{trigger.trigger_name}.py", trigger.arguments)
        task = asyncio.create_task(self._run(process, trigger.trigger_name))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return None

    def cancel(self) -> None:
        """Stop every running script (each gets its grace); returns at once."""
        for task in list(self._running):
            task.cancel()

    async def wait(self) -> None:
        """Wait until no script runs."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _refusal(self, name: str) -> str | None:
        if not _IDENTIFIER.match(name):
            return "not a plain name"
        if self._max_running <= 0:
            return "triggers are not run here"
        if len(self._running) >= self._max_running:
            return f"{self._max_running} triggers already running"
        bundle = self._bundle_dir.resolve()
        script = (bundle / f"{name}.py").resolve()
        if not script.is_relative_to(bundle):
            return "its file lies outside the bundle"
        if not script.is_file():
            return f"no {name}.py in the bundle"
        return None

    async def _run(self, process: _Supervised, name: str) -> None:
        try:
            await process.start()
        except AgataError as exc:
            await self._note(f"trigger {name} could not start: {exc}")
            return
        try:
            async with asyncio.timeout(self._timeout):
                outcome = await process.wait()
        except TimeoutError:
            outcome = await process.stop()
        except asyncio.CancelledError:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(process.stop())
            raise
        text = f"trigger {name} {outcome.state}: {outcome.reason}"
        if outcome.ok:
            logger.info("%s: %s", self._name, text)
        else:
            await self._note(text)
