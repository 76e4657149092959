"""``TaskProcess``: supervises one side of one task (or one trigger script).

It starts ``python <script> [arguments...]`` in the bundle directory, reads stdout and
stderr *concurrently* (a task writing only to stderr cannot fill a pipe nobody reads),
turns every line into a message (:mod:`agata.runtime.messages`) and hands the messages,
in order and one at a time, to the owner's async callback. Awaiting the callback per line
is the backpressure: a task flooding its output waits for the owner instead of growing
the supervisor's memory. Only the last ``tail_lines`` log lines are kept, for :meth:`tail`.

States (one :meth:`TaskProcess._transition` method changes them)::

    STARTING ──spawned──▶ RUNNING ──"Finished" / error / stop()──▶ STOPPING
        │                    │                                       │ process exits
        ▼                    ▼ exits by itself                       ▼
      FAILED          FINISHED | FAILED                   FINISHED | FAILED | STOPPED

- ``info "Finished"``: STOPPING; the process gets ``finish_grace`` seconds to exit by
  itself, then SIGTERM, then SIGKILL after ``grace``. Ends FINISHED.
- ``error``: STOPPING at once (SIGTERM, SIGKILL after ``grace``). Ends FAILED with the
  exception text as reason.
- The process exits without having reported "Finished": FAILED, reason ``exited with
  code N: <the last line it wrote to stderr>`` (usually the exception, e.g. ``exited with
  code 1: ModuleNotFoundError: No module named 'x'``), ``exited with code N without
  reporting Finished`` when it wrote nothing to stderr, or ``killed by signal SIGKILL``
  (``: <line>`` too); a trigger script, ``require_finished=False``, ends FINISHED on exit
  code 0.
- :meth:`TaskProcess.stop` by the owner: STOPPING, and the distinct terminal state
  STOPPED — the owner's decision is neither the task's success nor its failure.
- A limit (:class:`~agata.runtime.limits.Limits`): past ``wall_seconds`` the process is
  ended (STOPPING at once); a memory or process limit the kernel enforced is read from
  the container after the exit. Either ends FAILED with a reason naming the limit.

The first cause wins: an error sent while stopping after "Finished" changes nothing.
Whenever the main process has exited, the rest of its process group is killed, so no
grandchild outlives the task.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agata.errors import AgataError, ErrorCode
from agata.runtime.limits import Limits
from agata.runtime.messages import (
    MAX_LINE_CHARS,
    Error,
    Info,
    OutputLine,
    Print,
    Stream,
    TaskMessage,
    Trigger,
    parse_line,
)
from agata.runtime.process import (
    AsyncioProcessLauncher,
    ByteReader,
    ProcessHandle,
    ProcessLauncher,
    task_environment,
)
from agata.runtime.triggers import TriggerRunner

__all__ = ["MessageCallback", "ProcessState", "TaskOutcome", "TaskProcess"]

logger = logging.getLogger(__name__)

MessageCallback = Callable[[TaskMessage], Awaitable[None]]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CHUNK = 64 * 1024
_QUEUE_SIZE = 64


class ProcessState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FINISHED = "finished"  # reported "Finished" (terminal)
    FAILED = "failed"  # reported an error, or exited without "Finished" (terminal)
    STOPPED = "stopped"  # stopped by its owner (terminal)

    @property
    def is_terminal(self) -> bool:
        return self in (ProcessState.FINISHED, ProcessState.FAILED, ProcessState.STOPPED)


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """How a task process ended.

    ``exit_code`` follows ``Popen.returncode`` (``-N``: killed by signal ``N``); it is
    None when the process never started.
    """

    state: ProcessState
    reason: str
    exit_code: int | None

    @property
    def ok(self) -> bool:
        return self.state is ProcessState.FINISHED


class _Event(enum.Enum):
    SPAWNED = "spawned"
    SPAWN_FAILED = "spawn failed"
    FINISHED = "reported Finished"
    ERROR = "reported an error"
    STOP = "stop requested"
    LIMIT = "exceeded a limit"
    EXITED = "exited"


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code} without reporting Finished"


#: ANSI escape sequences (Flower colours its stderr even when it is not a terminal).
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
#: The last stderr line appended to an exit's reason is cut to this many characters.
LAST_LINE_CHARS = 500


def exit_reason(code: int, tail: Sequence[OutputLine | Print]) -> str:
    """Why a process that exited with ``code`` without "Finished" failed: the exit, and
    the last non-blank line it wrote to stderr (of ``tail``), which says why better."""
    for line in reversed(tail):
        if isinstance(line, OutputLine) and line.stream is Stream.STDERR:
            text = _ANSI.sub("", line.text).strip()
            if text:
                exit_text = f"exited with code {code}" if code >= 0 else _exit_reason(code)
                return f"{exit_text}: {text[:LAST_LINE_CHARS]}"
    return _exit_reason(code)


class TaskProcess:
    """One supervised task process: ``python <script> [arguments...]`` in ``bundle_dir``.

    Use :meth:`for_side` for a task's ``server``/``client`` side. All methods must be
    called from the event loop's thread.

    Args:
        bundle_dir: the task's bundle directory; the working directory of the process.
        script: a ``.py`` file name inside ``bundle_dir`` (no directories).
        arguments: passed after the script.
        on_message: awaited with every message, in order, one at a time. Exceptions it
            raises are logged and do not disturb the supervision. It must not await
            :meth:`stop` (that would wait for itself); it may call :meth:`request_stop`.
        launcher: the OS boundary; real asyncio subprocesses by default.
        python: the interpreter; ``sys.executable`` by default.
        env: added to the environment (the allowlisted part of AGATA's, with
            ``FLWR_TELEMETRY_ENABLED=0`` and ``PYTHONUNBUFFERED=1``).
        limits: of the process tree, passed to the launcher; ``wall_seconds`` is kept here.
        require_finished: exiting without reporting "Finished" is a failure (tasks); when
            False, exit code 0 is a success (trigger scripts).
        grace: seconds between SIGTERM and SIGKILL.
        finish_grace: seconds a process that reported "Finished" may take to exit alone.
        drain_timeout: after the exit, how long output may stay silent while a process
            outside the group still holds the pipes open before reading is abandoned.
        tail_lines: how many log lines :meth:`tail` keeps.
        trigger_timeout: a trigger script running longer is stopped.
        max_triggers: trigger scripts allowed to run at once (0: triggers refused).
        name: for logs; ``<bundle dir name>/<script>`` by default.
        program: a Python program outside the bundle to run instead of ``script`` (an
            installed console script such as ``flower-supernode``; an absolute path).
            ``script`` then only names the process; ``bundle_dir`` stays the working
            directory.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        script: str,
        arguments: Sequence[str] = (),
        *,
        on_message: MessageCallback | None = None,
        launcher: ProcessLauncher | None = None,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        require_finished: bool = True,
        grace: float = 5.0,
        finish_grace: float = 2.0,
        drain_timeout: float = 2.0,
        tail_lines: int = 200,
        trigger_timeout: float = 300.0,
        max_triggers: int = 4,
        name: str | None = None,
        limits: Limits | None = None,
        program: str | Path | None = None,
    ) -> None:
        if program is not None and not Path(program).is_absolute():
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT, f"program must be an absolute path, got {program!r}"
            )
        self._program = Path(program) if program is not None else None
        if Path(script).name != script or not script.endswith(".py"):
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT, f"script must be a .py file name, got {script!r}"
            )
        self.bundle_dir = Path(bundle_dir)
        self.script = script
        self.arguments = tuple(str(argument) for argument in arguments)
        self.name = name or f"{self.bundle_dir.name}/{script}"
        self.limits = limits or Limits()
        self._on_message = on_message
        self._launcher = launcher or AsyncioProcessLauncher()
        self._python = python or sys.executable
        self._env = dict(env or {})
        self._require_finished = require_finished
        self._grace = grace
        self._finish_grace = finish_grace
        self._drain_timeout = drain_timeout

        self._state = ProcessState.STARTING
        self._spawning = False
        self._stop_requested = False
        self._ending: ProcessState | None = None  # the terminal state STOPPING leads to
        self._reason = ""
        self._outcome: TaskOutcome | None = None
        self._handle: ProcessHandle | None = None
        self._exit_code: int | None = None
        self._exited = asyncio.Event()
        self._done = asyncio.Event()

        self._queue: asyncio.Queue[TaskMessage | None] = asyncio.Queue(_QUEUE_SIZE)
        self._accepting = True  # the queue still takes messages
        self._notes: list[OutputLine] = []  # runtime notes raised while dispatching
        self._tail: deque[OutputLine | Print] = deque(maxlen=max(tail_lines, 0))
        self._bytes_read = 0
        self._reads_waiting = 0
        self._readers: list[asyncio.Task[None]] = []
        self._dispatcher: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._terminator: asyncio.Task[None] | None = None
        self._terminator_patient = False  # still waiting for a voluntary exit
        self._wall_timer: asyncio.TimerHandle | None = None
        self._limit: str | None = None  # the limit that ended the process
        self._triggers = TriggerRunner(
            self.bundle_dir,
            self._trigger_process,
            self._queue_note,
            timeout=trigger_timeout,
            max_running=max_triggers,
            name=self.name,
        )

    @classmethod
    def for_side(
        cls,
        bundle_dir: str | Path,
        side: str,
        work_path: str | Path,
        arguments: Sequence[str] = (),
        **options: Any,
    ) -> TaskProcess:
        """One side of a task: ``python <side>.py <work_path> [arguments...]``, with
        ``HOME`` set to ``work_path``."""
        if not _IDENTIFIER.match(side):
            raise AgataError(ErrorCode.INVALID_ARGUMENT, f"invalid task side {side!r}")
        options["env"] = {"HOME": str(work_path), **(options.get("env") or {})}
        return cls(bundle_dir, f"{side}.py", [str(work_path), *arguments], **options)

    # -- what the owner sees ------------------------------------------------------------

    @property
    def state(self) -> ProcessState:
        return self._state

    @property
    def outcome(self) -> TaskOutcome | None:
        """The final outcome, once the state is terminal."""
        return self._outcome

    @property
    def pid(self) -> int | None:
        return self._handle.pid if self._handle else None

    @property
    def pgid(self) -> int | None:
        """Record it with :attr:`token` to end leftovers after a restart."""
        return self._handle.pgid if self._handle else None

    @property
    def token(self) -> str:
        """The run id of the process's container ("" without containment): what a
        restarted owner gives :meth:`~agata.runtime.containment.Containment.reap`."""
        return self._handle.run_id if self._handle else ""

    def tail(self, n: int | None = None) -> list[OutputLine | Print]:
        """The last ``n`` (default: all kept) log lines and print messages, oldest first."""
        lines = list(self._tail)
        return lines if n is None else lines[max(len(lines) - n, 0) :]

    # -- what the owner does ------------------------------------------------------------

    async def start(self) -> None:
        """Start the process; returns once it runs (state RUNNING).

        Raises :class:`AgataError` — NOT_FOUND when the script is missing, INTERNAL when
        it cannot be started, CONFLICT when already started — and the state is then
        FAILED (except for CONFLICT).
        """
        if self._spawning or self._handle is not None or self._state is not ProcessState.STARTING:
            raise AgataError(ErrorCode.CONFLICT, f"{self.name} was already started")
        self._spawning = True
        script = self._program or self.bundle_dir / self.script
        if not script.is_file():
            if self._program is not None:
                message = f"{script} is not installed"
            else:
                message = f"no {self.script} in {self.bundle_dir}"
            self._transition(_Event.SPAWN_FAILED, message)
            raise AgataError(ErrorCode.NOT_FOUND, message)
        argv = [self._python, str(self._program or self.script), *self.arguments]
        env = task_environment(self._env)
        launch_limits = None if self.limits.empty else self.limits
        try:
            if launch_limits is None:  # launchers written before limits keep working
                handle = await self._launcher.spawn(argv, cwd=self.bundle_dir, env=env)
            else:
                handle = await self._launcher.spawn(
                    argv, cwd=self.bundle_dir, env=env, limits=launch_limits
                )
        except AgataError as exc:
            self._transition(_Event.SPAWN_FAILED, str(exc))
            raise
        except asyncio.CancelledError:
            self._transition(_Event.SPAWN_FAILED, "start was cancelled")
            raise
        self._handle = handle
        self._readers = [
            asyncio.create_task(self._read(handle.stdout, Stream.STDOUT)),
            asyncio.create_task(self._read(handle.stderr, Stream.STDERR)),
        ]
        self._dispatcher = asyncio.create_task(self._dispatch())
        self._supervisor = asyncio.create_task(self._supervise(handle))
        self._transition(_Event.SPAWNED)

    def request_stop(self) -> None:
        """Ask for the process (and its running trigger scripts) to be stopped; returns
        at once. Safe to call from the message callback and in any state."""
        self._transition(_Event.STOP)
        self._triggers.cancel()

    async def stop(self, grace: float | None = None) -> TaskOutcome:
        """Stop the process group — SIGTERM, then SIGKILL after ``grace`` seconds (the
        constructor's ``grace`` by default) — and return the outcome. Ends STOPPED unless
        the task had already finished or failed."""
        current = asyncio.current_task()
        if current is not None and (current is self._dispatcher or current in self._readers):
            raise AgataError(
                ErrorCode.CONFLICT,
                "stop() awaited from the message callback would wait for itself; "
                "use request_stop()",
            )
        if grace is not None:
            self._grace = grace
        self.request_stop()
        outcome = await self.wait()
        await self._triggers.wait()
        return outcome

    async def wait(self) -> TaskOutcome:
        """Wait for the terminal state and return the outcome (cancellable)."""
        await self._done.wait()
        assert self._outcome is not None
        return self._outcome

    async def wait_triggers(self) -> None:
        """Wait until no trigger script runs (they may outlive the main process)."""
        await self._triggers.wait()

    # -- the state machine --------------------------------------------------------------

    def _transition(self, event: _Event, detail: str = "") -> None:
        """The one place where the state changes."""
        state = self._state
        if state is ProcessState.STARTING:
            if event is _Event.SPAWNED:
                # STARTING -> RUNNING
                self._set_state(ProcessState.RUNNING, event)
                self._start_wall_timer()
                if self._stop_requested:
                    self._transition(_Event.STOP)
            elif event is _Event.SPAWN_FAILED:
                # STARTING -> FAILED: the process never ran
                self._end(ProcessState.FAILED, detail, event)
            elif event is _Event.STOP and self._spawning:
                # STARTING -> STARTING: stop as soon as the process exists
                self._stop_requested = True
            elif event is _Event.STOP:
                # STARTING -> STOPPED: stopped before start() was called
                self._end(ProcessState.STOPPED, "stopped before it started", event)
            else:  # FINISHED, ERROR, EXITED cannot precede SPAWNED
                raise AgataError(ErrorCode.INTERNAL, f"{event.value} while {state}")
        elif state is ProcessState.RUNNING:
            if event is _Event.FINISHED:
                # RUNNING -> STOPPING: let it exit by itself, then end it; ends FINISHED
                self._begin_stopping(ProcessState.FINISHED, "reported Finished", event)
            elif event in (_Event.ERROR, _Event.LIMIT):
                # RUNNING -> STOPPING: end it now; ends FAILED
                self._begin_stopping(ProcessState.FAILED, detail, event)
            elif event is _Event.STOP:
                # RUNNING -> STOPPING: the owner ends it; ends STOPPED
                self._begin_stopping(ProcessState.STOPPED, "stopped by owner", event)
            elif event is _Event.EXITED:
                # RUNNING -> FINISHED | FAILED: exited by itself without "Finished"
                code = self._exit_code if self._exit_code is not None else -1
                if self._limit is not None:
                    self._end(ProcessState.FAILED, f"ended by its {self._limit}", event)
                elif code == 0 and not self._require_finished:
                    self._end(ProcessState.FINISHED, "exited with code 0", event)
                else:
                    self._end(ProcessState.FAILED, exit_reason(code, self._tail), event)
            else:
                raise AgataError(ErrorCode.INTERNAL, f"{event.value} while {state}")
        elif state is ProcessState.STOPPING:
            if event is _Event.STOP and self._terminator_patient:
                # STOPPING -> STOPPING: the owner will not wait for a voluntary exit
                self._terminate(patience=0.0)
            elif event is _Event.EXITED:
                # STOPPING -> FINISHED | FAILED | STOPPED: the cause decided which
                assert self._ending is not None
                if self._limit is not None and self._ending is ProcessState.FAILED:
                    self._reason = f"ended by its {self._limit} ({self._reason})"
                self._end(self._ending, self._reason, event)
            else:
                # STOPPING -> STOPPING: the first cause wins
                logger.debug("%s: %s ignored while stopping", self.name, event.value)
        else:
            # FINISHED | FAILED | STOPPED: terminal, nothing changes
            logger.debug("%s: %s ignored, already %s", self.name, event.value, state)

    def _set_state(self, state: ProcessState, event: _Event) -> None:
        logger.info("%s: %s -> %s (%s)", self.name, self._state, state, event.value)
        self._state = state

    def _begin_stopping(self, ending: ProcessState, reason: str, event: _Event) -> None:
        self._ending = ending
        self._reason = reason
        self._set_state(ProcessState.STOPPING, event)
        self._terminate(patience=self._finish_grace if ending is ProcessState.FINISHED else 0.0)

    def _end(self, state: ProcessState, reason: str, event: _Event) -> None:
        if self._wall_timer is not None:
            self._wall_timer.cancel()
        self._set_state(state, event)
        self._outcome = TaskOutcome(state, reason, self._exit_code)
        if state is not ProcessState.FINISHED:
            logger.info("%s: %s", self.name, reason)
        self._done.set()

    def _start_wall_timer(self) -> None:
        seconds = self.limits.wall_seconds
        if seconds is not None:
            reason = f"wall time limit of {seconds:g} s exceeded"
            self._wall_timer = asyncio.get_running_loop().call_later(
                seconds, self._transition, _Event.LIMIT, reason
            )

    # -- stopping -----------------------------------------------------------------------

    def _terminate(self, patience: float) -> None:
        """(Re)start ending the group: wait ``patience`` s, SIGTERM, SIGKILL after grace."""
        if self._terminator is not None:
            self._terminator.cancel()
        self._terminator_patient = patience > 0
        self._terminator = asyncio.create_task(self._terminate_group(patience))

    async def _terminate_group(self, patience: float) -> None:
        assert self._handle is not None
        if patience > 0 and await self._exits_within(patience):
            return
        self._terminator_patient = False
        logger.info("%s: SIGTERM to process group %d", self.name, self._handle.pgid)
        self._handle.signal_group(signal.SIGTERM)
        if await self._exits_within(self._grace):
            return
        logger.warning("%s: still running %.1f s after SIGTERM; SIGKILL", self.name, self._grace)
        self._handle.signal_group(signal.SIGKILL)

    async def _exits_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._exited.wait()
        except TimeoutError:
            return False
        return True

    # -- watching -----------------------------------------------------------------------

    async def _supervise(self, handle: ProcessHandle) -> None:
        """Wait for the exit, clean the group, drain the output, then decide."""
        try:
            self._exit_code = await handle.wait()
        finally:
            self._exited.set()
            # The main process is gone: nothing else of its group may stay behind.
            handle.signal_group(signal.SIGKILL)
            if self._limit is None:
                limit = handle.limit_exceeded()
                if limit is not None:
                    self._limit = limit
        await self._drain_readers()
        handle.close()
        self._accepting = False
        await self._queue.put(None)
        if self._dispatcher is not None:
            await self._dispatcher
        if self._terminator is not None:
            self._terminator.cancel()
        self._transition(_Event.EXITED)

    async def _drain_readers(self) -> None:
        """Read what is left; give up on pipes held open by a process outside the group."""
        pending: set[asyncio.Task[None]] = set(self._readers)
        progress = self._bytes_read
        while pending:
            _, pending = await asyncio.wait(pending, timeout=self._drain_timeout)
            stuck = self._bytes_read == progress and self._reads_waiting == len(pending)
            if pending and stuck:
                logger.warning(
                    "%s: output still held open by a process outside its group; "
                    "not reading it further",
                    self.name,
                )
                for reader in pending:
                    reader.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return
            progress = self._bytes_read

    async def _read(self, reader: ByteReader, stream: Stream) -> None:
        """Split a pipe into lines of at most MAX_LINE_CHARS bytes, in constant memory."""
        line = bytearray()
        truncated = False
        try:
            while True:
                self._reads_waiting += 1
                try:
                    chunk = await reader.read(_CHUNK)
                finally:
                    self._reads_waiting -= 1
                if not chunk:
                    break
                self._bytes_read += len(chunk)
                start = 0
                while True:
                    newline = chunk.find(b"\n", start)
                    end = len(chunk) if newline < 0 else newline
                    if not truncated:
                        room = MAX_LINE_CHARS - len(line)
                        truncated = end - start > room
                        line += chunk[start : start + min(room, end - start)]
                    if newline < 0:
                        break
                    await self._queue.put(self._line(line, truncated, stream))
                    line.clear()
                    truncated = False
                    start = newline + 1
            if line or truncated:
                await self._queue.put(self._line(line, truncated, stream))
        except (OSError, ValueError):  # a broken pipe ends this stream, not the task
            logger.exception("%s: reading %s failed", self.name, stream)

    @staticmethod
    def _line(raw: bytearray, truncated: bool, stream: Stream) -> TaskMessage:
        return parse_line(raw.decode("utf-8", errors="replace"), stream, truncated=truncated)

    async def _dispatch(self) -> None:
        """Apply and deliver messages one at a time, in the order they were read."""
        while True:
            message = await self._queue.get()
            if message is None:
                return
            self._apply(message)
            await self._deliver(message)
            while self._notes:
                await self._deliver(self._notes.pop(0))

    def _apply(self, message: TaskMessage) -> None:
        if isinstance(message, OutputLine | Print):
            self._tail.append(message)
        elif isinstance(message, Info) and message.is_finished:
            self._transition(_Event.FINISHED)
        elif isinstance(message, Error):
            self._transition(_Event.ERROR, message.exception)
        elif isinstance(message, Trigger):
            if self._state is ProcessState.RUNNING:
                problem = self._triggers.start(message)
            else:
                problem = f"the task is {self._state}"
            if problem is not None:
                text = f"trigger {message.trigger_name!r} refused: {problem}"
                self._notes.append(self._note(text))

    async def _deliver(self, message: TaskMessage) -> None:
        if self._on_message is None:
            return
        try:
            await self._on_message(message)
        except Exception:
            logger.exception("%s: the message callback failed on %r", self.name, message)

    def _note(self, text: str) -> OutputLine:
        logger.warning("%s: %s", self.name, text)
        note = OutputLine(Stream.SUPERVISOR, text)
        self._tail.append(note)
        return note

    # -- triggers -----------------------------------------------------------------------

    def _trigger_process(self, script: str, arguments: Sequence[str]) -> TaskProcess:
        limits = Limits(**{**self.limits.as_dict(), "wall_seconds": None})
        return TaskProcess(
            self.bundle_dir,
            script,
            arguments,
            on_message=self._trigger_output(script),
            launcher=self._launcher,
            python=self._python,
            env=self._env,
            require_finished=False,
            grace=self._grace,
            drain_timeout=self._drain_timeout,
            tail_lines=20,
            max_triggers=0,
            name=f"{self.name}:trigger {script}",
            limits=limits,
        )

    def _trigger_output(self, script: str) -> MessageCallback:
        async def log_output(message: TaskMessage) -> None:
            if isinstance(message, OutputLine):
                logger.info("%s: %s: %s", self.name, script, message.text)
            elif isinstance(message, Print):
                logger.info("%s: %s: %s", self.name, script, message.message)

        return log_output

    async def _queue_note(self, text: str) -> None:
        note = self._note(text)
        if self._accepting:
            await self._queue.put(note)
