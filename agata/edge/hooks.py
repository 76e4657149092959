"""Device hooks: a program of the device's owner, run on every task-state change.

The original blinked an LED on the Raspberry Pi's GPIO while a task trained. Here the
agent runs a configured hook program (``hook_command``: ``--hook``, ``AGATA_HOOK_COMMAND``
or ``hook_command`` in agata.toml; a command line split like a shell does, without a
shell) whenever a task of the device changes state. The state is in its environment:

==================  ==============================================================
variable            value
==================  ==============================================================
AGATA_HOOK_STATE    ``downloading``, ``running``, ``round``, ``finished``,
                    ``failed``, ``quarantined`` or ``stopped``
AGATA_TASK_ID       the task
AGATA_ROUND         the round just reported (``round``, ``finished``), else empty
AGATA_REASON        why it failed, was quarantined or stopped, else empty
AGATA_METRICS       the round's metrics as a JSON object (``{}`` when none)
AGATA_USER_ID       this device
AGATA_HOOK_TIME     when the change happened, epoch seconds
==================  ==============================================================

The rest of the agent's environment is passed on (``AGATA_LED_PIN`` of the example
hook, ``PATH``, ...), except the enrollment token (:data:`SECRET_VARIABLES`).

Contract:

- :meth:`HookRunner.notify` never blocks and never raises: it queues the change and
  returns. The agent's loop awaits nothing of a hook.
- One hook process at a time, in the order of the changes. At most ``backlog`` changes
  wait; beyond that the oldest are dropped (a warning once per overflow), so a hook
  slower than the changes shows the latest states, never eats memory.
- A hook runs in a process group of its own and is killed (SIGKILL to the group) after
  ``timeout`` seconds. Its stdout and stderr (together, the first 4 KiB) are logged at
  INFO; a non-zero exit, a timeout or a failure to start it is logged as a warning. None
  of these affects the agent or its tasks.
- :meth:`HookRunner.close` lets queued hooks run for a bounded time, then kills what
  still runs: an agent stopping waits at most that long for its hooks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import time
from dataclasses import dataclass, field
from enum import StrEnum

from agata.edge.reports import DeviceReport
from agata.errors import AgataError, ErrorCode

__all__ = ["HookEvent", "HookRunner", "HookState", "event_of_report", "parse_hook_command"]

logger = logging.getLogger(__name__)

OUTPUT_LIMIT = 4096
#: Variables of the agent's environment a hook does not get (they are credentials).
SECRET_VARIABLES = frozenset({"AGATA_ENROLLMENT_TOKEN"})


class HookState(StrEnum):
    DOWNLOADING = "downloading"
    RUNNING = "running"
    ROUND = "round"
    FINISHED = "finished"
    FAILED = "failed"
    QUARANTINED = "quarantined"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class HookEvent:
    """One task-state change, as the hook sees it."""

    state: HookState
    task_id: str
    round: int | None = None
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def environment(self, user_id: str) -> dict[str, str]:
        return {
            "AGATA_HOOK_STATE": str(self.state),
            "AGATA_TASK_ID": self.task_id,
            "AGATA_ROUND": "" if self.round is None else str(self.round),
            "AGATA_REASON": self.reason,
            "AGATA_METRICS": json.dumps(self.metrics, sort_keys=True),
            "AGATA_USER_ID": user_id,
            "AGATA_HOOK_TIME": f"{self.time:.6f}",
        }


def event_of_report(report: DeviceReport) -> HookEvent | None:
    """The hook's view of a report the agent sends the cloud (None: not a task state)."""
    if report.status == "running" and report.round is not None:
        state = HookState.ROUND
    else:
        try:
            state = HookState(report.status)
        except ValueError:
            return None
    return HookEvent(state, report.task_id, report.round, report.reason, dict(report.metrics))


def parse_hook_command(command: str) -> list[str]:
    """The argv of a hook command line; AgataError(INVALID_ARGUMENT) naming the problem
    when it cannot be split or its program is not an executable file."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"hook_command {command!r}: {exc}") from None
    if not argv:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, "hook_command is empty")
    program = shutil.which(argv[0])
    if program is None:
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT,
            f"hook_command: {argv[0]!r} is not an executable file (nor on PATH)",
        )
    return [program, *argv[1:]]


class HookRunner:
    """Runs the hook program for the state changes it is told about (see the module)."""

    def __init__(self, argv: list[str], *, timeout: float = 10.0, backlog: int = 32) -> None:
        if timeout <= 0:
            raise AgataError(ErrorCode.INVALID_ARGUMENT, "hook_timeout must be > 0")
        self.argv = list(argv)
        self.timeout = timeout
        self._pending: collections.deque[HookEvent] = collections.deque()
        self._backlog = max(1, backlog)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._dropping = False
        self._worker: asyncio.Task[None] | None = None
        self._user_id = ""
        self.runs = 0
        self.failures = 0

    @classmethod
    def from_command(cls, command: str, timeout: float) -> HookRunner:
        return cls(parse_hook_command(command), timeout=timeout)

    def start(self, user_id: str) -> None:
        """Start the worker on the running loop (once)."""
        if self._worker is None:
            self._user_id = user_id
            self._worker = asyncio.create_task(self._work(), name="agent hooks")

    def notify(self, event: HookEvent) -> None:
        """Queue ``event`` for the hook; never blocks, never raises."""
        if len(self._pending) >= self._backlog:
            self._pending.popleft()
            if not self._dropping:
                logger.warning(
                    "hook %s is slower than the task changes; dropping the oldest ones",
                    self.argv[0],
                )
                self._dropping = True
        self._pending.append(event)
        self._idle.clear()
        self._wake.set()

    async def close(self, timeout: float = 1.0) -> None:
        """Let queued hooks run for at most ``timeout`` seconds, then stop (killing a
        hook that still runs)."""
        if self._worker is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        self._worker.cancel()
        await asyncio.gather(self._worker, return_exceptions=True)
        self._worker = None

    async def _work(self) -> None:
        while True:
            if not self._pending:
                self._dropping = False
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            event = self._pending.popleft()
            try:
                await self._run_one(event)
            except asyncio.CancelledError:
                raise
            except Exception:  # a hook never takes the agent down
                self.failures += 1
                logger.exception("hook %s on %s failed", self.argv[0], event.state)

    async def _run_one(self, event: HookEvent) -> None:
        name = self.argv[0]
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                env=_hook_environment(event.environment(self._user_id)),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own group: a timeout kills its children too
            )
        except OSError as exc:
            self.failures += 1
            logger.warning("hook %s could not start on %s: %s", name, event.state, exc)
            return
        self.runs += 1
        assert process.stdout is not None
        output = b""
        try:
            async with asyncio.timeout(self.timeout):
                output = await _read_limited(process.stdout, OUTPUT_LIMIT)
                code = await process.wait()
        except TimeoutError:
            self.failures += 1
            _kill_group(process.pid)
            await process.wait()
            logger.warning(
                "hook %s on %s of task %s: killed after %.1f s",
                name,
                event.state,
                event.task_id,
                self.timeout,
            )
            return
        except asyncio.CancelledError:
            _kill_group(process.pid)
            with contextlib.suppress(ProcessLookupError):
                await asyncio.shield(process.wait())
            raise
        text = output.decode("utf-8", "replace").strip()
        if text:
            logger.info("hook %s on %s: %s", name, event.state, text)
        if code != 0:
            self.failures += 1
            logger.warning(
                "hook %s on %s of task %s exited with %s", name, event.state, event.task_id, code
            )


def _hook_environment(state: dict[str, str]) -> dict[str, str]:
    """The agent's environment without its secrets, plus the state variables."""
    inherited = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
    return {**inherited, **state}


async def _read_limited(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``stream``; the rest is read and thrown away (so a hook
    writing much is not blocked on a full pipe)."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return bytes(kept)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
