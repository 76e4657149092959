"""The server side of tasks on this cloud replica: start, supervise, record, stop.

Each running task is a :class:`~agata.runtime.TaskProcess`. Its messages become
metrics, log lines and events in the store and notifications for the gateways; when
it ends (Finished, error, crash, stop) the task is marked not running with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agata.cloud.notifier import Notifier
from agata.errors import AgataError, ErrorCode
from agata.files import write_private_file
from agata.runtime.limits import Limits
from agata.runtime.messages import Error, Info, LogLine, Model, Print, TaskMessage, Trigger
from agata.runtime.process import kill_process_group
from agata.runtime.sandbox import TaskSandbox
from agata.runtime.supervisor import TaskOutcome, TaskProcess, TaskState
from agata.store.store import NewLogLine, Store
from agata.store.store import TaskState as StoredState

logger = logging.getLogger(__name__)

EventSink = Callable[..., object]

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
        store: Store,
        notifier: Notifier,
        bundles_root: Path,
        work_root: Path,
        *,
        grace: float = 5.0,
        record_event: EventSink | None = None,
        sandbox: TaskSandbox | None = None,
    ) -> None:
        self.store = store
        self.sandbox = sandbox
        self.notifier = notifier
        self.bundles_root = bundles_root
        self.work_root = work_root
        self.grace = grace
        self.record_event = record_event
        self._processes: dict[str, TaskProcess] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._log_buffers: dict[str, list[NewLogLine]] = {}

    def is_local(self, task_id: str) -> bool:
        return task_id in self._processes

    async def start(
        self, task_id: str, arguments: Sequence[str], *, limits: Mapping[str, Any] | None = None
    ) -> int | None:
        """Spawn ``server.py`` of the task's bundle within the task's ``limits`` (over
        the configured defaults); returns the process group id."""
        bundle = self.bundles_root / f"task_{task_id}"
        record_dir = self.work_root / f"task_{task_id}"
        record_dir.mkdir(parents=True, exist_ok=True)
        work = record_dir
        options: dict[str, object] = {}
        if self.sandbox is not None:
            bundle, work = self.sandbox.place("server", task_id, bundle, record_dir)
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
            on_message=lambda message: self._on_message(task_id, message),
            grace=self.grace,
            name=f"task {task_id} server",
            env={WORK_PATH_ENV: str(work)},
            **options,
        )
        await process.start()  # raises NOT_FOUND / INTERNAL with the reason
        self._processes[task_id] = process
        if process.pgid is not None:
            # Lets a restarted cloud end this group, and only this one (see reconcile).
            record = json.dumps({"pgid": process.pgid, "token": process.token})
            write_private_file(record_dir / PID_FILE, record)
        watcher = asyncio.create_task(self._watch(task_id, process))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return process.pgid

    async def stop(self, task_id: str) -> TaskOutcome | None:
        process = self._processes.get(task_id)
        if process is None:
            return None
        return await process.stop(self.grace)

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.stop(self.grace) for p in self._processes.values()))
        if self._watchers:
            await asyncio.gather(*self._watchers, return_exceptions=True)
        if self.sandbox is not None:
            self.sandbox.close()

    def reconcile(self) -> list[str]:
        """After a restart: end leftover server processes, mark their tasks stopped."""
        fixed = []
        for task in self.store.list_tasks(running=True):
            if task.task_id in self._processes:
                continue
            self._end_leftover(task.task_id)
            self.store.set_task_state(
                task.task_id,
                running=False,
                state=StoredState.STOPPED,
                reason="the cloud restarted while the task ran; its server side was ended",
            )
            fixed.append(task.task_id)
        return fixed

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

    async def _on_message(self, task_id: str, message: TaskMessage) -> None:
        if isinstance(message, Model):
            metric = self.store.add_metric(task_id, message.round, "server", message.metrics)
            await self.notifier.notify(
                "metric",
                task_id=task_id,
                round=message.round,
                source="server",
                metrics=dict(metric.metrics),
                time=metric.time,
            )
        elif isinstance(message, Print | LogLine):
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

    async def _log(self, task_id: str, stream: str, text: str) -> None:
        now = time.time()
        buffer = self._log_buffers.setdefault(task_id, [])
        buffer.append(NewLogLine("server", stream, text, now))
        if len(buffer) >= LOG_BATCH_LINES:
            self._flush_logs(task_id)
        elif len(buffer) == 1:
            asyncio.get_running_loop().call_later(LOG_BATCH_SECONDS, self._flush_logs, task_id)
        await self.notifier.notify(
            "log", task_id=task_id, source="server", stream=stream, text=text, time=now
        )

    def _flush_logs(self, task_id: str) -> None:
        """Write the buffered log lines of ``task_id`` in one transaction."""
        lines = self._log_buffers.pop(task_id, None)
        if not lines:
            return
        try:
            self.store.add_log_lines(task_id, lines)
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

    async def _watch(self, task_id: str, process: TaskProcess) -> None:
        outcome = await process.wait()
        self._flush_logs(task_id)
        self._processes.pop(task_id, None)
        (self.work_root / f"task_{task_id}" / PID_FILE).unlink(missing_ok=True)
        state = {
            TaskState.FINISHED: StoredState.FINISHED,
            TaskState.FAILED: StoredState.FAILED,
        }.get(outcome.state, StoredState.STOPPED)
        try:
            # A task the operator stopped is already marked stopped: keep that.
            if self.store.get_task(task_id).running:
                self.store.set_task_state(
                    task_id, running=False, state=state, reason=outcome.reason
                )
        except AgataError as exc:
            if exc.code is not ErrorCode.NOT_FOUND:
                logger.error("cannot record the end of task %s: %s", task_id, exc.message)
            return
        logger.info("task %s server side ended: %s (%s)", task_id, outcome.state, outcome.reason)
        self._event("task_ended", f"task {task_id} {state}: {outcome.reason}", task_id)
        await self.notifier.notify(
            "task", task_id=task_id, running=False, state=str(state), reason=outcome.reason
        )
