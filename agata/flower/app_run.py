"""One run of a flower-app task on the cloud: SuperLink, submission, following, end.

:class:`FlowerAppRun` is what the cloud's server side of a flower-app task is; its
owner sees it as it sees a script task's :class:`~agata.runtime.TaskProcess`
(``start``, ``wait``, ``stop``, ``pgid``/``token``, messages to ``on_message``)::

    start: check the app (and FAB hash), the port, TLS -> SuperLink (supervised process)
           -> its port answers -> flwr run (the task's server arguments as run config)
    follow: flwr log --stream  -> every line to on_message (TaskReporter lines of the
                                  ServerApp become metrics); its end: read the status
            every poll_seconds -> flwr supernode list -> the fail-fast rules
            the SuperLink      -> exits on its own: the run failed
    end:   finished:completed -> FINISHED; finished:failed -> FAILED (the exception's
           text from the log); finished:stopped -> STOPPED; a fail-fast rule -> FAILED
           naming the nodes; stop() -> STOPPED. The Flower run is stopped if it is not
           finished, then the SuperLink is ended (SIGTERM, SIGKILL after ``grace``);
           its ServerApp processes are in its container and end with it.

The first end wins. The end is one :class:`~agata.runtime.supervisor.TaskOutcome`, so
the part of the run a run record keeps (state, reason, metrics, log lines) comes out
the same way as a script task's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agata.errors import AgataError, ErrorCode, invalid
from agata.flower.app_bundle import FlowerApp, RunOptions, app_folder
from agata.flower.fail_fast import NodeWatch
from agata.flower.flwr_cli import FlwrCli, RunStatus, flower_bin, flower_environment
from agata.flower.node_keys import check_public_key
from agata.flower.superlink import (
    RunFolder,
    check_port_free,
    client_host,
    superlink_arguments,
    wait_listening,
)
from agata.runtime.limits import Limits
from agata.runtime.messages import OutputLine, Stream, TaskMessage, parse_line
from agata.runtime.process import ProcessLauncher
from agata.runtime.supervisor import MessageCallback, ProcessState, TaskOutcome, TaskProcess
from agata.tls import CertificateFiles

__all__ = ["FlowerAppRun", "split_arguments"]

logger = logging.getLogger(__name__)

#: How long a new SuperLink may take to open its port.
LISTEN_SECONDS = 60.0
#: The run's status is read at least this often even while its log streams.
STATUS_SECONDS = 30.0
#: An exception's last line in a traceback: ``ValueError: text``.
_EXCEPTION = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b.*)$")
_LEVEL = re.compile(r"^\s*(INFO|DEBUG)\s*:")


def split_arguments(
    arguments: Sequence[str], defaults: RunOptions
) -> tuple[RunOptions, dict[str, str]]:
    """The run's options and run config from the task's server arguments: every item is
    ``key=value``; ``agata.<key>=N`` sets an option of ``[tool.agata]``, the rest is
    Flower's run config (values in TOML syntax, e.g. ``num-server-rounds=3``)."""
    config: dict[str, str] = {}
    overrides: dict[str, Any] = {}
    for item in arguments:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise invalid(
                f"server argument {item!r} of a flower-app task must be key=value "
                "(a run config value, or agata.<option>=N)"
            )
        if key.startswith("agata."):
            try:
                overrides[key.removeprefix("agata.")] = float(value)
            except ValueError:
                raise invalid(f"server argument {item!r}: the value must be a number") from None
        else:
            config[key] = value.strip()
    if not overrides:
        return defaults, config
    table = {name: getattr(defaults, attribute) for name, attribute in RunOptions._KEYS.items()}
    table.update(overrides)
    return RunOptions.from_table(table, "server arguments"), config


class FlowerAppRun:
    """The cloud's side of one flower-app run (see the module docstring).

    Args:
        task_id: for names and logs.
        bundle: the task's bundle folder (the app project, or one FAB).
        folder: the run's folder (:class:`RunFolder`), made here.
        host, port: where the SuperLink listens; devices reach it there.
        arguments: the task's server arguments (:func:`split_arguments`).
        on_message: awaited with every line of the ServerApp's log, as messages.
        tls: the cloud's certificate; None runs insecure (loopback only).
        launcher, limits, grace: for the SuperLink's process, as for a task process.
        owner: (uid, gid) of the task user the SuperLink runs as, if one.
    """

    def __init__(
        self,
        task_id: str,
        bundle: Path,
        folder: Path,
        host: str,
        port: int,
        arguments: Sequence[str],
        *,
        on_message: MessageCallback,
        tls: CertificateFiles | None = None,
        launcher: ProcessLauncher | None = None,
        limits: Limits | None = None,
        grace: float = 5.0,
        env: Mapping[str, str] | None = None,
        owner: tuple[int, int] | None = None,
    ) -> None:
        self.task_id = task_id
        self.bundle = bundle
        self.folder = RunFolder(folder)
        self.host = host
        self.port = port
        self.arguments = list(arguments)
        self.tls = tls
        self.grace = grace
        self._on_message = on_message
        self._launcher = launcher
        self._limits = limits
        self._env = dict(env or {})
        self._owner = owner
        self.cli = FlwrCli(
            self.folder.home, f"{client_host(host)}:{port}", tls.ca_file if tls else None
        )
        self.app: FlowerApp | None = None
        self.options = RunOptions()
        self.run_id: str | None = None
        self.names: dict[str, str] = {}  # device id by Flower node id
        self._registrations: dict[str, asyncio.Future[str]] = {}  # by public key
        self._superlink: TaskProcess | None = None
        self._app_dir = bundle
        self._run_config: dict[str, str] = {}
        self._listening = asyncio.Event()  # the SuperLink's port answers
        self._submitted = asyncio.Event()  # Flower took the run (run_id is set)
        self._alive = asyncio.Event()
        self._tail: deque[str] = deque(maxlen=200)
        self._tasks: set[asyncio.Task[None]] = set()
        self._log: asyncio.subprocess.Process | None = None
        self._log_ended = asyncio.Event()
        self._ender: asyncio.Task[None] | None = None
        self._outcome: TaskOutcome | None = None
        self._done = asyncio.Event()

    # -- what the owner sees ------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._superlink.pid if self._superlink else None

    @property
    def pgid(self) -> int | None:
        return self._superlink.pgid if self._superlink else None

    @property
    def token(self) -> str:
        return self._superlink.token if self._superlink else ""

    @property
    def node_auth(self) -> bool:
        """Whether only registered SuperNode keys may join (with the cloud's TLS)."""
        return self.tls is not None

    @property
    def outcome(self) -> TaskOutcome | None:
        return self._outcome

    # -- what the owner does ------------------------------------------------------

    async def start(self) -> None:
        """Check the app, the port and TLS, and spawn the SuperLink; returns once it is
        spawned (devices may be told of the run at once: a SuperNode waits for its
        SuperLink). Its port opening and the submission follow in the background; a
        failure there ends the run FAILED with the reason.

        Raises AgataError with the reason (nothing of the run is then left running):
        INVALID_ARGUMENT for a bad app or server argument, or a non-loopback host
        without TLS; CONFLICT when the port is taken; NOT_FOUND / INTERNAL when the
        SuperLink cannot be spawned.
        """
        try:
            self.folder.make(self._owner)
            self._app_dir, self.app = app_folder(self.bundle, self.folder.root)
            self.options, self._run_config = split_arguments(self.arguments, self.app.options)
            arguments = superlink_arguments(self.folder, self.host, self.port, self.tls)
            check_port_free(self.host, self.port)
            self.cli.write_config(self._owner)
            await self._spawn_superlink(arguments)
        except BaseException as exc:
            if isinstance(exc, AgataError):
                reason = exc.message
            elif isinstance(exc, asyncio.CancelledError):
                reason = "start was cancelled"
            else:
                reason = f"{type(exc).__name__}: {exc}"
            await self._shutdown()
            self._settle(ProcessState.FAILED, reason)
            raise
        self._spawn(self._launch())
        self._spawn(self._watch_superlink())

    async def _launch(self) -> None:
        """Wait for the SuperLink's port, submit the app, follow the run."""
        try:
            if not await wait_listening(self.host, self.port, LISTEN_SECONDS, self._alive):
                raise AgataError(
                    ErrorCode.INTERNAL,
                    f"the SuperLink did not open port {self.port}: {self._superlink_reason()}",
                )
            self._listening.set()
            self.run_id = await self.cli.submit(self._app_dir, self._run_config)
        except AgataError as exc:
            self._end(ProcessState.FAILED, f"the app was not submitted: {exc.message}")
            return
        logger.info(
            "task %s: Flower run %s submitted to its SuperLink on %s:%d",
            self.task_id,
            self.run_id,
            self.host,
            self.port,
        )
        self._submitted.set()
        self._spawn(self._follow_log())
        self._spawn(self._watch_run())

    async def wait(self) -> TaskOutcome:
        await self._done.wait()
        assert self._outcome is not None
        return self._outcome

    def request_stop(self) -> None:
        self._end(ProcessState.STOPPED, "stopped by its owner")

    async def stop(self, grace: float | None = None) -> TaskOutcome:
        """Stop the Flower run, then end the SuperLink; returns the outcome."""
        if grace is not None:
            self.grace = grace
        if self._superlink is None and self._outcome is None:
            self._settle(ProcessState.STOPPED, "stopped before it started")
        self.request_stop()
        return await self.wait()

    async def register_node(self, device_id: str, public_key: str) -> str | None:
        """Register a selected device's SuperNode key on this run's SuperLink; returns
        Flower's node id (None when the run has no SuperNode authentication).

        Idempotent per key: a device that asks again (its first call timed out while
        ``flwr supernode register`` ran) waits for the same registration."""
        key = check_public_key(public_key)
        if not self.node_auth:
            return None
        pending = self._registrations.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._register(device_id, key))
            self._registrations[key] = pending
            pending.add_done_callback(
                lambda done: (
                    self._registrations.pop(key, None)
                    if done.cancelled() or done.exception() is not None
                    else None
                )
            )
        return await asyncio.shield(pending)

    async def _register(self, device_id: str, key: str) -> str:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LISTEN_SECONDS):
                await self._listening.wait()
        if self._outcome is not None or self._ender is not None or not self._listening.is_set():
            raise AgataError(ErrorCode.CONFLICT, f"task {self.task_id}: its run is not running")
        path = self.folder.keys / f"{device_id}-{len(self._registrations)}.pub"
        path.write_text(key + "\n")
        node_id = await self.cli.register_node(path, device_id)
        self.names[node_id] = device_id
        return node_id

    # -- start ----------------------------------------------------------------------

    async def _spawn_superlink(self, arguments: list[str]) -> None:
        program = flower_bin("flower-superlink")
        if not Path(program).is_absolute():
            raise AgataError(
                ErrorCode.NOT_FOUND,
                "flower-superlink is not installed beside AGATA (pip install 'agata[flower]')",
            )
        self._superlink = TaskProcess(
            self.folder.root,
            "superlink.py",  # names the process only
            arguments,
            program=program,
            on_message=self._superlink_line,
            launcher=self._launcher,
            env={**flower_environment(self.folder.home), **self._env},
            require_finished=False,
            grace=self.grace,
            limits=self._limits,
            name=f"task {self.task_id} superlink",
        )
        await self._superlink.start()
        self._alive.set()

    async def _superlink_line(self, message: TaskMessage) -> None:
        """The SuperLink's own output: its warnings and errors go to the run's log."""
        if isinstance(message, OutputLine) and message.text.strip():
            self._tail.append(message.text)
            if not _LEVEL.match(message.text):
                await self._deliver(OutputLine(message.stream, f"superlink: {message.text}"))

    # -- following ----------------------------------------------------------------------

    async def _follow_log(self) -> None:
        assert self.run_id is not None
        try:
            self._log = await self.cli.open_log(self.run_id)
        except OSError as exc:
            logger.warning("task %s: no log stream: %s", self.task_id, exc)
            self._log_ended.set()
            return
        assert self._log.stdout is not None
        try:
            while raw := await self._log.stdout.readline():
                text = raw.decode(errors="replace").rstrip("\r\n")
                if text.startswith(("Using SuperLink", "Starting logstream")) or not text.strip():
                    continue
                self._tail.append(text)
                await self._deliver(parse_line(text, Stream.STDOUT))
        finally:
            self._log_ended.set()

    async def _watch_run(self) -> None:
        """Status and nodes, until the run ends."""
        assert self.run_id is not None
        loop = asyncio.get_running_loop()
        watch = NodeWatch(self.options, loop.time(), self.names)
        last_status = loop.time()
        while self._outcome is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.poll_seconds):
                    await self._log_ended.wait()
            if self._outcome is not None:
                return
            if self._log_ended.is_set() or loop.time() - last_status >= STATUS_SECONDS:
                last_status = loop.time()
                status = await self._status()
                if status is not None and status.finished:
                    self._end_by_status(status)
                    return
                if self._log_ended.is_set() and status is not None:
                    self._log_ended.clear()  # the stream broke mid-run: open it again
                    self._spawn(self._follow_log())
            try:
                nodes = await self.cli.nodes()
            except AgataError as exc:
                logger.info("task %s: node list not read: %s", self.task_id, exc.message)
                continue
            reason = watch.check(nodes, loop.time())
            if reason is not None:
                self._end(ProcessState.FAILED, reason)
                return

    async def _status(self) -> RunStatus | None:
        assert self.run_id is not None
        try:
            return await self.cli.status(self.run_id)
        except AgataError as exc:
            logger.info("task %s: run status not read: %s", self.task_id, exc.message)
            return None

    def _end_by_status(self, status: RunStatus) -> None:
        outcome = status.status.removeprefix("finished:")
        if outcome == "completed":
            self._end(ProcessState.FINISHED, f"the Flower run {status.run_id} completed")
        elif outcome == "stopped":
            self._end(ProcessState.STOPPED, f"the Flower run {status.run_id} was stopped")
        else:
            why = self._exception() or status.details or "no reason given"
            self._end(ProcessState.FAILED, f"the Flower run {status.run_id} failed: {why}")

    def _exception(self) -> str:
        """The last exception line of the log (a ServerApp's traceback ends with it)."""
        for line in reversed(self._tail):
            match = _EXCEPTION.match(line)
            if match:
                return match.group(1)[:1000]
        return ""

    async def _watch_superlink(self) -> None:
        assert self._superlink is not None
        outcome = await self._superlink.wait()
        self._alive.clear()
        self._end(
            ProcessState.FAILED,
            f"the SuperLink ended: {outcome.reason}: {self._superlink_reason()}",
        )

    def _superlink_reason(self) -> str:
        lines = [line.strip() for line in self._tail if line.strip()]
        return " | ".join(lines[-3:]) or "no output"

    # -- the end --------------------------------------------------------------------

    def _end(self, state: ProcessState, reason: str) -> None:
        """The run ends as ``state`` (once: the first cause wins)."""
        if self._ender is not None or self._outcome is not None:
            return
        if state is not ProcessState.FINISHED:
            logger.info(
                "task %s: Flower run %s ends %s: %s", self.task_id, self.run_id, state, reason
            )
        self._ender = asyncio.create_task(self._finish(state, reason))

    async def _finish(self, state: ProcessState, reason: str) -> None:
        try:
            if (
                state is not ProcessState.FINISHED
                and self.run_id is not None
                and self._alive.is_set()
            ):
                status = await self._status()
                if status is None or not status.finished:
                    with contextlib.suppress(AgataError):
                        await self.cli.stop(self.run_id)
        finally:
            await self._shutdown()
            self._settle(state, reason)

    async def _shutdown(self) -> None:
        """End the log stream and the SuperLink (its container holds its ServerApps)."""
        if self._log is not None and self._log.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._log.kill()
            with contextlib.suppress(Exception):
                await self._log.wait()
        if self._superlink is not None:
            await self._superlink.stop(self.grace)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    def _settle(self, state: ProcessState, reason: str) -> None:
        if self._outcome is None:
            code = (
                self._superlink.outcome.exit_code
                if self._superlink and self._superlink.outcome
                else None
            )
            self._outcome = TaskOutcome(state, reason, code)
            self._done.set()

    # -- helpers --------------------------------------------------------------------

    async def _deliver(self, message: TaskMessage) -> None:
        try:
            await self._on_message(message)
        except Exception:
            logger.exception("task %s: a message of its Flower run was not handled", self.task_id)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
