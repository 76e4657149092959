"""The server side of tasks on this cloud replica: start, supervise, record, stop.

Each running task is a :class:`~agata.runtime.TaskProcess` (a script task's
``server.py``) or a :class:`~agata.flower.app_run.FlowerAppRun` (a flower-app task's
SuperLink and Flower run; the task's kind picks). Their messages become
metrics, log lines and events in the store and notifications for the gateways; when
it ends (Finished, error, crash, stop) the task is marked not running with the reason,
by an :class:`~agata.cloud.services.task_ends.EndRecorder` that retries until the store takes it.

Ownership: a replica *claims* a task when it wins the task's start (the store's
``expected_running`` check) or, when it starts, takes over the tasks a previous run of the
cloud left marked running. Only the claiming replica records a claimed task's end, and
its periodic reconcile ends a claimed task whose process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, KeysView, Mapping, Sequence
from pathlib import Path
from typing import Any

from agata.cloud.bundles.artifact_store import ArtifactStore
from agata.cloud.bundles.bundle_store import BundleStore
from agata.cloud.services.notifier import Notifier
from agata.cloud.services.task_ends import RECONCILE_SECONDS, EndRecorder, TaskEnd
from agata.errors import AgataError, ErrorCode
from agata.files import write_private_file
from agata.flower.app_run import FlowerAppRun
from agata.protocol.notifications import ArtifactSaved, LogAppended, MetricRecorded, TaskChanged
from agata.runtime.limits import Limits
from agata.runtime.messages import (
    Artifact,
    Error,
    Info,
    Model,
    OutputLine,
    Print,
    TaskMessage,
    Trigger,
)
from agata.runtime.process import kill_process_group
from agata.runtime.sandbox import TaskSandbox
from agata.runtime.supervisor import ProcessState, TaskOutcome, TaskProcess
from agata.store.async_store import AsyncStore, as_async
from agata.store.store import NewLogLine, Store, TaskState
from agata.tls import CertificateFiles

logger = logging.getLogger(__name__)

EventSink = Callable[..., object]
#: What runs a task's server side: both end in a TaskOutcome and record pgid and token.
ServerSide = TaskProcess | FlowerAppRun

#: Environment variable naming the task's work folder (for the task and its triggers).
WORK_PATH_ENV = "AGATA_WORK_PATH"

#: In ``<work_root>/task_<id>/`` while its server side runs: {"pgid", "token"} (the token
#: is the run id of its container). With a task user that folder is not the task's work
#: folder, so the task cannot rewrite the record a restarted cloud acts on.
PID_FILE = "server.pid.json"

#: A server side's log lines are written in batches: at most this many lines, held at
#: most this long (one transaction per line capped ingestion at ~3,200 lines/s).
LOG_BATCH_LINES = 500
LOG_BATCH_SECONDS = 0.05


def expand_arguments(arguments: Sequence[str], host: str, port: int) -> list[str]:
    """Replace ``{host}`` and ``{port}`` in task arguments by the task's values."""
    return [a.replace("{host}", host).replace("{port}", str(port)) for a in arguments]


class ServerTasks:
    """Task processes started by this replica."""

    def __init__(
        self,
        store: Store | AsyncStore,
        notifier: Notifier,
        bundles: BundleStore,
        work_root: Path,
        *,
        artifacts: ArtifactStore,
        grace: float = 5.0,
        record_event: EventSink | None = None,
        reconcile_seconds: float = RECONCILE_SECONDS,
        on_ended: Callable[[str], None] | None = None,
        sandbox: TaskSandbox | None = None,
        flower_tls: CertificateFiles | None = None,
    ) -> None:
        self.store = as_async(store)
        self.flower_tls = flower_tls  # the cloud's certificate for flower-app SuperLinks
        self.artifacts = artifacts
        self.sandbox = sandbox
        self.notifier = notifier
        self.bundles = bundles
        self.work_root = work_root
        self.grace = grace
        self.record_event = record_event
        self._processes: dict[str, ServerSide] = {}
        self._runs: dict[str, tuple[int | None, Path]] = {}  # task id -> (run, work folder)
        self._watchers: set[asyncio.Task[None]] = set()
        self._log_buffers: dict[str, list[NewLogLine]] = {}
        self._log_writes = asyncio.Lock()  # batches reach the store in the order taken
        self._log_flushes: set[asyncio.Task[None]] = set()
        self._claims: set[str] = set()  # owned here; end not recorded yet
        self.on_ended = on_ended  # told each task id whose end was recorded
        self.ends = EndRecorder(
            self.store, self._settled, self._lost, reconcile_seconds=reconcile_seconds
        )

    def is_local(self, task_id: str) -> bool:
        return task_id in self._processes

    def ending(self, task_id: str) -> TaskEnd | None:
        """The end of ``task_id``'s server side that the store has not taken yet."""
        return self.ends.pending(task_id)

    def ending_ids(self) -> KeysView[str]:
        """The tasks with an end the store has not taken yet (a live view; usually empty)."""
        return self.ends.pending_ids()

    def start_reconciling(self) -> None:
        """Keep recording refused ends and ending claimed tasks whose process is gone."""
        self.ends.start()

    async def record_end(
        self, task_id: str, state: TaskState, reason: str, *, run: int | None = None
    ) -> None:
        """Record that a claimed task (its run ``run``) ended (retried until the store
        takes it)."""
        self._claims.add(task_id)
        await self.ends.record(TaskEnd(task_id, state, reason, run=run))

    async def start(
        self,
        task_id: str,
        arguments: Sequence[str],
        *,
        limits: Mapping[str, Any] | None = None,
        run: int | None = None,
        flower_app: tuple[str, int] | None = None,
    ) -> int | None:
        """Spawn ``server.py`` of the task's bundle within the task's ``limits`` (over
        the configured defaults) for its run ``run`` (what it reports is recorded in that
        run) — or, with ``flower_app`` (the task's host and port), the run's SuperLink,
        which then submits the app; returns the process group id."""
        bundle = self.bundles.task_dir(task_id)  # refuses an id that is not a plain name
        record_dir = self.work_root / f"task_{task_id}"
        record_dir.mkdir(parents=True, exist_ok=True)
        work = record_dir
        options: dict[str, object] = {}
        process: ServerSide
        if flower_app is not None:
            host, port = flower_app
            owner = None
            if self.sandbox is not None:
                bundle, work = await self._place(task_id, bundle, record_dir)
                user = self.sandbox.containment.task_user
                owner = (user.uid, user.gid) if user is not None else None
            process = FlowerAppRun(
                task_id,
                bundle,
                work / "flower",
                host,
                port,
                arguments,
                on_message=lambda message: self._on_message(task_id, run, message),
                tls=self.flower_tls,
                launcher=self.sandbox.launcher if self.sandbox is not None else None,
                limits=(
                    self.sandbox.limits_for(Limits.from_mapping(limits))
                    if self.sandbox is not None
                    else None
                ),
                grace=self.grace,
                owner=owner,
            )
            return await self._started(task_id, process, record_dir, run, work)
        if self.sandbox is not None:
            bundle, work = await self._place(task_id, bundle, record_dir)
            run_limits = self.sandbox.limits_for(Limits.from_mapping(limits))
            python = await self.sandbox.python_for(
                bundle, lambda text: self._event("environment", text, task_id)
            )
            options = {"launcher": self.sandbox.launcher, "limits": run_limits, "python": python}
        process = TaskProcess.for_side(
            bundle,
            "server",
            work,
            arguments,
            on_message=lambda message: self._on_message(task_id, run, message),
            grace=self.grace,
            name=f"task {task_id} server",
            env={WORK_PATH_ENV: str(work)},
            **options,
        )
        return await self._started(task_id, process, record_dir, run, work)

    async def _place(self, task_id: str, bundle: Path, record_dir: Path) -> tuple[Path, Path]:
        """The side's bundle copy and work folder (:meth:`TaskSandbox.place`): at once
        when the kept copy is current and small, else in a thread (a copy of a large
        bundle, or waiting for :meth:`prepare`'s, must not hold the event loop)."""
        assert self.sandbox is not None
        placed = self.sandbox.place_kept("server", task_id, bundle, record_dir)
        if placed is not None:
            return placed
        return await asyncio.to_thread(self.sandbox.place, "server", task_id, bundle, record_dir)

    async def prepare(self, task_id: str) -> None:
        """Make the bundle copy the next server side of ``task_id`` runs in now (after an
        upload), so that its start finds it made (:meth:`TaskSandbox.place` keeps it
        while neither it nor the bundle changes). Nothing to do without a task user or
        while a server side of the task runs here; a copy that fails is only logged
        (the start makes it again, or says why)."""
        if self.sandbox is None or self.sandbox.containment.task_user is None:
            return
        if task_id in self._processes:
            return
        try:
            bundle = self.bundles.task_dir(task_id)
            await self._place(task_id, bundle, self.work_root / f"task_{task_id}")
        except AgataError as exc:
            logger.warning("task %s: bundle copy not made ahead: %s", task_id, exc.message)

    async def _started(
        self, task_id: str, process: ServerSide, record_dir: Path, run: int | None, work: Path
    ) -> int | None:
        await process.start()  # raises NOT_FOUND / INTERNAL / INVALID_ARGUMENT with the reason
        self._processes[task_id] = process
        self._runs[task_id] = (run, work)
        self._claims.add(task_id)
        if process.pgid is not None:
            # Lets a restarted cloud end this group, and only this one (see reconcile).
            # Not fsynced: it is on the way to the devices' notice, and a power loss,
            # the one thing an fsync guards against, ends the server side too.
            record = json.dumps({"pgid": process.pgid, "token": process.token})
            try:
                write_private_file(record_dir / PID_FILE, record, durable=False)
            except OSError as exc:  # a full disk must not leave the process unwatched
                logger.warning(
                    "task %s: %s not written (%s); a restarted cloud cannot end this "
                    "server side by itself",
                    task_id,
                    PID_FILE,
                    exc.strerror,
                )
        watcher = asyncio.create_task(self._watch(task_id, process))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return process.pgid

    def flower_run(self, task_id: str) -> FlowerAppRun | None:
        """The flower-app run of ``task_id`` on this replica, if one runs here."""
        process = self._processes.get(task_id)
        return process if isinstance(process, FlowerAppRun) else None

    async def stop(self, task_id: str) -> TaskOutcome | None:
        process = self._processes.get(task_id)
        if process is None:
            return None
        return await process.stop(self.grace)

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.stop(self.grace) for p in self._processes.values()))
        if self._watchers:
            await asyncio.gather(*self._watchers, return_exceptions=True)
        if self._log_flushes:
            await asyncio.gather(*self._log_flushes, return_exceptions=True)
        await self.ends.stop()
        if self.sandbox is not None:
            self.sandbox.close()

    async def reconcile(self) -> list[str]:
        """When the cloud starts: end leftover server processes, mark their tasks stopped.

        Every task found running without a process here is claimed: a previous run of
        this cloud left it. Its end is recorded like any other (retried while the store
        refuses it), so a store that cannot take writes does not stop the cloud starting.
        """
        fixed = []
        for task in await self.store.list_tasks(running=True):
            if task.task_id in self._processes:
                continue
            self._end_leftover(task.task_id)
            await self.record_end(
                task.task_id,
                TaskState.STOPPED,
                "the cloud restarted while the task ran; its server side was ended",
            )
            fixed.append(task.task_id)
        return fixed

    def _lost(self) -> list[TaskEnd]:
        """Claimed tasks with no process here and no end on its way to the store."""
        return [
            TaskEnd(
                task_id,
                TaskState.STOPPED,
                "its server side is gone: no process on the cloud that started it",
            )
            for task_id in sorted(self._claims)
            if task_id not in self._processes and self.ends.pending(task_id) is None
        ]

    async def _settled(self, end: TaskEnd, written: bool) -> None:
        self._claims.discard(end.task_id)
        if not written:
            return  # stopped by the operator, deleted, or running again: nothing to say
        task_id, state = end.task_id, end.state
        if self.on_ended is not None:
            self.on_ended(task_id)
        logger.info("task %s server side ended: %s (%s)", task_id, state, end.reason)
        self._event("task_ended", f"task {task_id} {state}: {end.reason}", task_id)
        await self.notifier.notify(
            TaskChanged(task_id=task_id, running=False, state=str(state), reason=end.reason)
        )

    def _end_leftover(self, task_id: str) -> None:
        """End the server process group a previous run of this cloud left behind."""
        pid_file = self.work_root / f"task_{task_id}" / PID_FILE
        try:
            recorded = json.loads(pid_file.read_text())
            pgid, token = int(recorded["pgid"]), str(recorded["token"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        with contextlib.suppress(AgataError, OSError):
            if self.sandbox is not None:
                ended = self.sandbox.reap(token, pgid)
            else:
                ended = kill_process_group(pgid, token=token or None)
            if ended:
                logger.warning(
                    "ended the leftover server side of task %s (group %d)", task_id, pgid
                )
        pid_file.unlink(missing_ok=True)

    # -- messages of a running task ------------------------------------------------

    async def _on_message(self, task_id: str, run: int | None, message: TaskMessage) -> None:
        if isinstance(message, Model):
            try:
                metric = await self.store.add_metric(
                    task_id, message.round, "server", message.metrics, run=run
                )
            except AgataError as exc:  # a full disk or a deleted task: say so, go on
                logger.error(
                    "task %s: server metrics of round %d not recorded: %s",
                    task_id,
                    message.round,
                    exc.message,
                )
                return
            await self.notifier.notify(
                MetricRecorded(
                    task_id=task_id,
                    round=message.round,
                    source="server",
                    metrics=dict(metric.metrics),
                    time=metric.time,
                    run=run,
                )
            )
        elif isinstance(message, Print | OutputLine):
            text = message.message if isinstance(message, Print) else message.text
            stream = "print" if isinstance(message, Print) else str(message.stream)
            await self._log(task_id, stream, text)
        elif isinstance(message, Info):
            await self._log(task_id, "info", message.info)
            self._event("task_info", f"task {task_id} reported {message.info}", task_id)
        elif isinstance(message, Error):
            await self._log(task_id, "error", message.exception)
        elif isinstance(message, Trigger):
            await self._log(task_id, "trigger", f"trigger {message.trigger_name}")
            self._event("trigger", f"trigger {message.trigger_name} fired", task_id)
        elif isinstance(message, Artifact):
            await self._save_artifact(task_id, run, message.path)

    async def _save_artifact(self, task_id: str, run: int | None, path: str) -> None:
        """Copy a saved file into the run's artifacts (in a thread) and record it; what
        goes wrong is said in the run's log (stream ``artifact``), nothing half-kept."""
        work = self._runs.get(task_id, (None, None))[1]
        if run is None or work is None:
            await self._log(task_id, "artifact", f"artifact {path!r} not kept: no run store")
            return
        try:
            saved = await asyncio.to_thread(self.artifacts.save, task_id, run, work, path)
            await self.store.add_artifact(task_id, run, saved.name, saved.size, saved.sha256)
        except AgataError as exc:
            logger.warning("task %s run %s: %s", task_id, run, exc.message)
            await self._log(task_id, "artifact", exc.message)
            return
        await self._log(task_id, "artifact", f"artifact {saved.name} kept ({saved.size} bytes)")
        await self.notifier.notify(
            ArtifactSaved(task_id=task_id, run=run, name=saved.name, size=saved.size)
        )

    async def _log(self, task_id: str, stream: str, text: str) -> None:
        now = time.time()
        run = self._runs.get(task_id, (None, None))[0]
        buffer = self._log_buffers.setdefault(task_id, [])
        buffer.append(NewLogLine("server", stream, text, now))
        if len(buffer) >= LOG_BATCH_LINES:
            await self._flush_logs(task_id)
        elif len(buffer) == 1:
            asyncio.get_running_loop().call_later(LOG_BATCH_SECONDS, self._flush_logs_soon, task_id)
        await self.notifier.notify(
            LogAppended(
                task_id=task_id, source="server", stream=stream, text=text, time=now, run=run
            )
        )

    def _flush_logs_soon(self, task_id: str) -> None:
        flush = asyncio.ensure_future(self._flush_logs(task_id))
        self._log_flushes.add(flush)
        flush.add_done_callback(self._log_flushes.discard)

    async def _flush_logs(self, task_id: str) -> None:
        """Write the buffered log lines of ``task_id`` in one transaction."""
        async with self._log_writes:
            lines = self._log_buffers.pop(task_id, None)
            if not lines:
                return
            run = self._runs.get(task_id, (None, None))[0]
            await self._write_logs(task_id, lines, run)

    async def _write_logs(self, task_id: str, lines: list[NewLogLine], run: int | None) -> None:
        try:
            await self.store.add_log_lines(task_id, lines, run=run)
        except AgataError as exc:
            if exc.code is not ErrorCode.NOT_FOUND:  # a deleted task's lines go with it
                logger.error(
                    "task %s: %d server log line(s) not recorded: %s",
                    task_id,
                    len(lines),
                    exc.message,
                )

    def _event(self, function: str, event: str, task_id: str) -> None:
        if self.record_event is not None:
            self.record_event(function, event, task_id=task_id)

    async def _watch(self, task_id: str, process: ServerSide) -> None:
        outcome = await process.wait()
        state = {
            ProcessState.FINISHED: TaskState.FINISHED,
            ProcessState.FAILED: TaskState.FAILED,
        }.get(outcome.state, TaskState.STOPPED)
        run = self._runs.get(task_id, (None, None))[0]
        end = TaskEnd(task_id, state, outcome.reason, process.pgid, run)
        try:
            await self._flush_logs(task_id)
            with contextlib.suppress(OSError):
                (self.work_root / f"task_{task_id}" / PID_FILE).unlink(missing_ok=True)
        finally:
            self._processes.pop(task_id, None)
            self._runs.pop(task_id, None)
            # A task the operator stopped is already marked stopped: the end is dropped.
            await self.ends.record(end)
