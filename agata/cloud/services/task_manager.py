"""The task manager service (the original "cloud task manager").

Serves the task operations of DESIGN.md on the bus with the original semantics, plus
listing, deletion, metrics, logs, events and the fleet overview. Selection criteria are
checked when a task is created or updated, so a bad expression is a 400 then and never
a failure of later device requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from agata.bus.bus import Bus, Consumer, Delivery
from agata.bus.envelope import RawJson, encode
from agata.bus.service import Service
from agata.cloud.bundles.artifact_store import ArtifactStore
from agata.cloud.bundles.bundle_store import BundleStore
from agata.cloud.credentials.download_passwords import DownloadPasswords
from agata.cloud.criteria.criteria_check import type_mismatches
from agata.cloud.criteria.criteria_language import DEVICE_FIELDS, CriteriaCache, compile_criteria
from agata.cloud.services.events import EventPublisher
from agata.cloud.services.notifier import Notifier
from agata.cloud.services.offer_cache import OfferCache
from agata.cloud.services.ratelog import RateLimitedWarning
from agata.cloud.services.run_scheduler import RunScheduler
from agata.cloud.services.server_tasks import ServerTasks, expand_arguments
from agata.cloud.services.views import (
    ONLINE_SECONDS,
    device_attributes,
    device_task_view,
    legacy_offer_view,
    offer_view,
    run_view,
    seconds_since,
    task_view,
)
from agata.errors import AgataError, ErrorCode, conflict, invalid
from agata.flower.app_bundle import check_app
from agata.flower.supernode import installed_flower
from agata.protocol import operations as ops
from agata.protocol.notifications import (
    DeviceChanged,
    TaskChanged,
    TaskStopRequested,
    parse_notification,
)
from agata.runtime.sandbox import TaskSandbox
from agata.settings.shared_settings import DEFAULT_REQUEST_INTERVAL
from agata.store.async_store import AsyncStore, as_async
from agata.store.run_store import Run, RunState
from agata.store.store import NewTask, Store, Task, TaskKind, TaskProgress, TaskState
from agata.tls import CertificateFiles

logger = logging.getLogger(__name__)

#: How long the list of running tasks is reused between device polls. Every replica's
#: changes end it at once through the "task" notification; the time bounds it if a
#: notification is lost (a broker outage).
RUNNING_CACHE_SECONDS = 1.0
#: A device's attributes are reused for its task requests for this many of its poll
#: intervals (``request_interval``). A change of the record (rpc_exec_update_user_info)
#: ends it at once through the registry's "device" notification; the time bounds it if a
#: notification is lost (a broker outage). It spans several polls: shorter than one, a
#: real fleet would never find its entries.
DEVICE_CACHE_POLLS = 3
#: Devices whose attributes are kept at most (all are dropped past this).
DEVICE_CACHE_SIZE = 100_000
#: What a starting task manager may do with tasks left marked running.
RECONCILE_CHOICES = ("stop", "restart")
#: A device's polls write its ``last_seen`` at most this often...
TOUCH_SECONDS = 10.0
#: ...and the writes of this long go in together, one transaction for the whole fleet
#: (every poll would otherwise be a commit).
TOUCH_BATCH_SECONDS = 1.0
#: The overview's recent failures: failed tasks and devices' failures and quarantines.
RECENT_FAILURES = 10


_NONE: frozenset[str] = frozenset()


class TaskManager(Service):
    def __init__(
        self,
        bus: Bus,
        store: Store | AsyncStore,
        bundles: BundleStore,
        work_root: Path,
        *,
        artifacts: ArtifactStore,
        legacy_devices: bool = False,
        hide_internal_errors: bool = False,
        grace: float = 5.0,
        register_events: bool = True,
        sandbox: TaskSandbox | None = None,
        flower_tls: CertificateFiles | None = None,
        poll_interval: float = DEFAULT_REQUEST_INTERVAL,
        reconcile: str = "stop",
        max_running_tasks: int | None = None,
    ) -> None:
        """``bundles`` is the process's one bundle store (the gateway's too, when both
        run here: a delete then waits for an upload of the same task, and digests are
        hashed once); ``artifacts`` its one artifact store, likewise. ``poll_interval``
        is the fleet's ``request_interval`` (it sizes the device cache); ``reconcile``
        says what :meth:`start` does with tasks a dead cloud left marked running:
        ``stop`` marks them stopped, ``restart`` starts their server side again."""
        super().__init__(bus, "task-manager", hide_internal_errors=hide_internal_errors)
        if reconcile not in RECONCILE_CHOICES:
            raise invalid(f"reconcile must be one of {', '.join(RECONCILE_CHOICES)}")
        self.store = as_async(store)
        self.bundles = bundles
        self.device_cache_seconds = DEVICE_CACHE_POLLS * poll_interval
        self.reconcile = reconcile
        self.legacy_devices = legacy_devices
        self.notifier = Notifier(bus)
        self.event = EventPublisher(bus, "task-manager", enabled=register_events)
        self.artifacts = artifacts
        self.server_tasks = ServerTasks(
            self.store,
            self.notifier,
            bundles,
            work_root,
            grace=grace,
            record_event=self.event,
            on_ended=self._run_ended,
            sandbox=sandbox,
            flower_tls=flower_tls,
            artifacts=self.artifacts,
        )
        self.scheduler = RunScheduler(
            self.store,
            max_running=max_running_tasks,
            launch=self._launch,
            fail=self._fail_waiting,
            joined=self._devices_joined,
        )
        self._background: set[asyncio.Task[None]] = set()
        self.criteria = CriteriaCache()
        self._running_cache: tuple[float, list[Task]] | None = None
        self._last_touch: dict[str, float] = {}
        self._touch_pending: set[str] = set()
        self._touch_flusher: asyncio.Task[None] | None = None
        self._device_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._unexpandable = RateLimitedWarning(logger)
        self.offers = OfferCache(DEVICE_CACHE_SIZE)
        self.download_passwords = DownloadPasswords()
        self._ending_hidden: frozenset[str] = frozenset()
        self._subscription: Consumer | None = None
        for name, handler in [
            (ops.CREATE_TASK, self.create_task),
            (ops.UPDATE_TASK, self.update_task),
            (ops.GET_TASK, self.get_task),
            (ops.LIST_TASKS, self.list_tasks),
            (ops.QUERY_TASKS, self.query_tasks),
            (ops.DELETE_TASK, self.delete_task),
            (ops.START_TASK, self.start_task),
            (ops.STOP_TASK, self.stop_task),
            (ops.SET_TASK_FILES, self.set_task_files),
            (ops.CLIENT_REQUESTING_TASK, self.client_requesting_task),
            (ops.GET_TASK_METRICS, self.get_task_metrics),
            (ops.GET_TASK_LOGS, self.get_task_logs),
            (ops.GET_TASK_EVENTS, self.get_task_events),
            (ops.GET_TASK_DEVICES, self.get_task_devices),
            (ops.VALIDATE_CRITERIA, self.validate_criteria),
            (ops.GET_OVERVIEW, self.get_overview),
            (ops.CHECK_DOWNLOAD_PASSWORD, self.check_password),
            (ops.REGISTER_FLOWER_NODE, self.register_flower_node),
            (ops.LIST_RUNS, self.list_runs),
            (ops.GET_RUN, self.get_run),
        ]:
            self.add_operation(name, ops.OPERATION_MODELS[name], handler)  # type: ignore[arg-type]

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        fixed = await self.server_tasks.reconcile()
        for task_id in fixed:
            logger.warning("task %s was left marked running; marked stopped", task_id)
        if self.reconcile == "restart":
            await self._restart_leftovers(fixed)
        self.server_tasks.start_reconciling()
        self._subscription = await self.bus.subscribe(
            ops.NOTIFICATIONS_TOPIC, self._on_notification
        )
        await super().start()
        self.event("start", "Service initialization")
        self._soon(self.scheduler.dequeue())  # runs queued before a restart

    async def _restart_leftovers(self, task_ids: list[str]) -> None:
        """``reconcile = restart``: start again the tasks a dead cloud left running (a
        new run, with the stored server arguments). One that cannot start (its end is
        not in the store yet, its bundle does not match) is logged and stays stopped."""
        for task_id in task_ids:
            try:
                await self.start_task(ops.StartTask(task_id=task_id))
            except AgataError as exc:
                logger.error("task %s not restarted: %s", task_id, exc.message)
            else:
                logger.warning("task %s was left marked running; started again", task_id)

    async def stop(self) -> None:
        await super().stop()
        if self._touch_flusher is not None:
            self._touch_flusher.cancel()
        await self._flush_touches()
        if self._subscription is not None:
            await self._subscription.cancel()
        await self.scheduler.stop()
        for job in list(self._background):
            job.cancel()
        await self.server_tasks.stop_all()
        await self.event.close()

    async def _on_notification(self, delivery: Delivery) -> None:
        """A device's record changed: forget its attributes and offers (a device's
        report on a task changes neither). A task changed (on any replica, or its server
        side ended): forget the running tasks and every offer. Another replica stopped a
        task whose server side runs here: end it."""
        notification = parse_notification(delivery.body)
        if isinstance(notification, DeviceChanged):
            self._device_cache.pop(notification.user_id, None)
            self.offers.device_changed(notification.user_id)
        elif isinstance(notification, TaskChanged):
            self._changed()  # any replica's change, or a server side's end: seen at once
        elif isinstance(notification, TaskStopRequested):
            if self.server_tasks.is_local(notification.task_id):
                await self.server_tasks.stop(notification.task_id)
        return None

    async def _device_attributes(self, user_id: str) -> dict[str, Any]:
        now = time.monotonic()
        cached = self._device_cache.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            device = await self.store.get_device(user_id)
        except AgataError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                raise AgataError(
                    ErrorCode.NOT_FOUND,
                    f"device {user_id} is not registered; send rpc_exec_update_user_info first",
                ) from None
            raise
        attributes = device_attributes(device)
        if len(self._device_cache) >= DEVICE_CACHE_SIZE:
            self._device_cache.clear()
        self._device_cache[user_id] = (now + self.device_cache_seconds, attributes)
        return attributes

    async def _flush_touches_soon(self) -> None:
        await asyncio.sleep(TOUCH_BATCH_SECONDS)
        await self._flush_touches()

    async def _flush_touches(self) -> None:
        """Write the pending ``last_seen`` of polling devices in one transaction."""
        ids, self._touch_pending = self._touch_pending, set()
        if not ids:
            return
        try:
            await self.store.touch_devices(ids)
        except Exception as exc:  # advisory: these devices' next polls try again
            for user_id in ids:
                self._last_touch.pop(user_id, None)
            logger.warning("could not record that %d device(s) polled: %s", len(ids), exc)

    def _changed(self) -> None:
        self._running_cache = None
        self.offers.tasks_changed()

    def _soon(self, job: Any) -> None:
        """Run a coroutine beside the service (kept until done; errors are logged)."""
        task: asyncio.Task[None] = asyncio.create_task(job)
        self._background.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._background.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                logger.error("task manager: %s", finished.exception())

        task.add_done_callback(done)

    def _run_ended(self, _task_id: str) -> None:
        """A run's end was recorded here: offers change, a queued run may start."""
        self._changed()
        self._soon(self.scheduler.dequeue())

    async def _running_tasks(self) -> list[Task]:
        """Running tasks to offer: not those whose end is known here but not recorded."""
        now = time.monotonic()
        cached = self._running_cache
        if cached is None or now - cached[0] > RUNNING_CACHE_SECONDS:
            fresh = await self.store.list_running_tasks()
            if cached is None or fresh != cached[1]:  # a change no notification told of
                self.offers.tasks_changed()
            cached = self._running_cache = (now, fresh)
        ending = self.server_tasks.ending_ids()  # checked every poll: usually empty
        hidden = frozenset(t.task_id for t in cached[1] if t.task_id in ending) if ending else _NONE
        if hidden != self._ending_hidden:  # an end the store has not taken yet: not offered
            self._ending_hidden = hidden
            self.offers.tasks_changed()
        return [t for t in cached[1] if t.task_id not in hidden]

    async def _views(self, tasks: list[Task]) -> list[dict[str, Any]]:
        """The records of ``tasks``; their run fields describe each one's current (or
        last) run, read from that run's record (never from its metrics). A fixed number
        of queries for any number of tasks (:meth:`Store.task_progress`)."""
        progress = await self.store.task_progress([t.task_id for t in tasks])
        return [_task_record(t, progress.get(t.task_id)) for t in tasks]

    # -- operations -------------------------------------------------------------------

    async def create_task(self, req: ops.CreateTask) -> None:
        """Register a task; it stays stopped until started."""
        criteria = req.selection_criteria or ""
        compile_criteria(criteria)  # 400 with the reason
        await self.store.create_task(
            NewTask(
                task_id=req.task_id,
                host=req.host,
                port=req.port,
                username=req.username,
                password=req.password,
                selection_criteria=criteria,
                server_arguments=req.server_arguments or [],
                client_arguments=req.client_arguments or [],
                tags=req.tags or [],
                limits=req.limits.model_dump(exclude_none=True) if req.limits else {},
                kind=TaskKind(req.kind),
                min_devices=req.min_devices,
                start_deadline_s=req.start_deadline_s,
            )
        )
        self.event(ops.CREATE_TASK, "Task registered", task_id=req.task_id)
        await self.notifier.notify(TaskChanged(task_id=req.task_id, running=False, state="stopped"))

    async def update_task(self, req: ops.UpdateTask) -> None:
        """Change only the given fields; never the running state, metrics, logs or events."""
        if req.selection_criteria is not None:
            compile_criteria(req.selection_criteria)
        task = await self.store.update_task(
            req.task_id,
            host=req.host,
            port=req.port,
            username=req.username,
            password=req.password,
            selection_criteria=req.selection_criteria,
            server_arguments=req.server_arguments,
            client_arguments=req.client_arguments,
            tags=req.tags,
            limits=req.limits.model_dump(exclude_none=True) if req.limits else None,
            kind=req.kind,
            min_devices=req.min_devices,
            start_deadline_s=req.start_deadline_s,
        )
        self._changed()
        await self.notifier.notify(
            TaskChanged(
                task_id=task.task_id,
                running=task.running,
                state=str(task.state),
                version=task.version,
            )
        )

    async def get_task(self, req: ops.TaskRef) -> dict[str, Any]:
        task = await self.store.get_task(req.task_id)
        return (await self._views([task]))[0]

    async def list_tasks(self, req: ops.ListTasks) -> list[dict[str, Any]]:
        return await self._views(await self.store.list_tasks(req.running))

    async def query_tasks(self, req: ops.QueryTasks) -> dict[str, Any]:
        """One page of tasks and the total matching ``q`` (:func:`task_filter`)."""
        matches = task_filter(req.q)
        tasks = [x for x in await self.store.list_tasks() if matches(x)]
        tasks.sort(key=lambda x: (str(getattr(x, req.sort)), x.task_id))
        if req.order == "desc":
            tasks.reverse()
        page = tasks[req.offset : req.offset + req.limit]
        return {"items": await self._views(page), "total": len(tasks)}

    async def delete_task(self, req: ops.TaskRef) -> None:
        await self.store.delete_task(req.task_id)  # 409 while running
        await asyncio.to_thread(self.bundles.delete, req.task_id)
        await asyncio.to_thread(self.artifacts.delete_task, req.task_id)
        self._changed()
        self.event(ops.DELETE_TASK, "Task deleted", task_id=req.task_id)
        await self.notifier.notify(TaskChanged(task_id=req.task_id, deleted=True, running=False))

    async def set_task_files(self, req: ops.SetTaskFiles) -> None:
        """Record the bundle listing after an upload (the gateway wrote the files). A new
        bundle version is a new task version: the devices' quarantines of the task end
        (each device drops its own when it is offered the new version)."""
        task = await self.store.set_task_files(req.task_id, req.files)
        await self.store.clear_quarantine(None, task.task_id)
        self._changed()
        self._soon(self.server_tasks.prepare(task.task_id))  # its start finds the copy made
        await self.notifier.notify(
            TaskChanged(
                task_id=task.task_id,
                running=task.running,
                state=str(task.state),
                version=task.version,
            )
        )

    async def start_task(self, req: ops.StartTask) -> None:
        """Start a run: the server side, with ``arguments`` or the stored
        server_arguments. Past ``--max-running-tasks`` the run is queued instead (null
        all the same); with ``min_devices`` it waits for them (:mod:`run_scheduler`)."""
        self.event(ops.START_TASK, "Initialization", task_id=req.task_id)
        task = await self.store.get_task(req.task_id)
        if task.running:
            end = self.server_tasks.ending(task.task_id)
            if end is not None:
                raise AgataError(
                    ErrorCode.UNAVAILABLE,
                    f"task {task.task_id} ended ({end.state}: {end.reason}) but the store "
                    "has not taken its end yet; the cloud keeps trying, start it again then",
                )
            raise conflict(f"task {task.task_id} is already running")
        if task.state is TaskState.QUEUED:
            raise conflict(
                f"task {task.task_id} is already queued (run {task.run}); it starts when a "
                "running run ends"
            )
        names = {f.name for f in task.files}
        if task.kind is TaskKind.FLOWER_APP:
            folder = self.bundles.task_dir(task.task_id)
            try:  # pyproject.toml with [tool.flwr.app] and both components, or one FAB
                await asyncio.to_thread(check_app, names, lambda n: (folder / n).read_bytes())
            except AgataError as exc:
                raise invalid(f"task {task.task_id}: {exc.message}") from None
        else:
            missing = [n for n in ("server.py", "client.py") if n not in names]
            if missing:
                raise invalid(
                    f"task {task.task_id} has no {' and no '.join(missing)} in its bundle; "
                    "upload the bundle files first"
                )
        # Devices verify every file against this listing: a bundle that does not match
        # (a crash between a write and its listing, a file changed behind the listing)
        # would make each of them fail and quarantine the task. Hashing runs in a thread;
        # a small bundle whose digests are all cached is checked here (a stat per file).
        if not self.bundles.check_listing(task.task_id, task.files, cached_only=True):
            await asyncio.to_thread(self.bundles.check_listing, task.task_id, task.files)
        arguments = req.arguments if req.arguments is not None else list(task.server_arguments)
        state, reason = await self.scheduler.first_state(task)
        run = await self.store.create_run(  # the claim: 409 if another start won
            task.task_id,
            state=state,
            server_arguments=expand_arguments(arguments, task.host, task.port),
            client_arguments=list(task.client_arguments),
            reason=reason,
        )
        if run.state is RunState.QUEUED:
            self.event(
                ops.START_TASK,
                f"Run {run.run} queued: {reason}",
                task_id=task.task_id,
                run=run.run,
            )
            await self.notifier.notify(
                TaskChanged(task_id=task.task_id, running=False, state="queued", run=run.run)
            )
            return
        await self._launch(task, run, raise_errors=True)

    async def _launch(self, task: Task, run: Run, *, raise_errors: bool = False) -> None:
        """Spawn the server side of a claimed run (started now or out of the queue: a
        run whose bundle was replaced or damaged while it waited fails with the reason,
        so its record never names files it did not run with)."""
        try:
            if run.files != task.files:
                raise invalid("the bundle was replaced while the run was queued; start it again")
            if not raise_errors:
                await asyncio.to_thread(self.bundles.check_listing, task.task_id, task.files)
            pgid = await self.server_tasks.start(
                task.task_id,
                list(run.server_arguments),
                limits=task.limits,
                run=run.run,
                flower_app=(task.host, task.port) if task.kind is TaskKind.FLOWER_APP else None,
            )
        except AgataError as exc:
            # Recorded like any end: retried if the store refuses it now.
            await self.server_tasks.record_end(
                task.task_id,
                TaskState.FAILED,
                f"server side did not start: {exc.message}",
                run=run.run,
            )
            if raise_errors:
                raise
            logger.warning("task %s run %d did not start: %s", task.task_id, run.run, exc)
            return
        # Devices hear of the run as soon as its server side is spawned: the store
        # already holds it running (the claim), so the offers they ask for next
        # include it. The server's pgid and the event are written after the notice.
        self._changed()
        await self.notifier.notify(
            TaskChanged(
                task_id=task.task_id,
                running=True,
                state="running",
                version=task.version,
                run=run.run,
                run_state=str(run.state),
            )
        )
        try:  # not if it ended or was stopped meanwhile (that end stays recorded)
            await self.store.set_task_state(
                task.task_id,
                running=True,
                state=TaskState.RUNNING,
                server_pid=pgid,
                expected_running=True,
            )
        except AgataError as exc:
            if exc.code not in (ErrorCode.CONFLICT, ErrorCode.NOT_FOUND):
                raise
            logger.info("task %s ended before its server's pgid was recorded", task.task_id)
        self.scheduler.watch(run)
        self.event(
            ops.START_TASK,
            f"Task started on cloud (run {run.run})",
            task_id=task.task_id,
            run=run.run,
        )

    async def _fail_waiting(self, task_id: str, run: int, reason: str) -> None:
        """A waiting run's deadline passed: the run fails, its server side ends."""
        task = await self.store.get_task(task_id)
        if task.run != run or not task.running:
            return
        try:
            await self.store.set_task_state(
                task_id, running=False, state=TaskState.FAILED, reason=reason, expected_running=True
            )
        except AgataError as exc:
            if exc.code in (ErrorCode.CONFLICT, ErrorCode.NOT_FOUND):
                return  # stopped or deleted meanwhile
            raise
        logger.warning("task %s run %d failed: %s", task_id, run, reason)
        await self._end_server(task_id)
        self.event("run_failed", f"Run {run} failed: {reason}", task_id=task_id, run=run)
        await self.notifier.notify(
            TaskChanged(task_id=task_id, running=False, state="failed", reason=reason, run=run)
        )
        self._soon(self.scheduler.dequeue())

    async def _devices_joined(self, task_id: str, run: int) -> None:
        self.event("run_running", f"Run {run}: its devices joined", task_id=task_id, run=run)
        await self.notifier.notify(
            TaskChanged(
                task_id=task_id, running=True, state="running", run=run, run_state="running"
            )
        )

    async def _end_server(self, task_id: str) -> None:
        """End a task's server side, here or on the replica that runs it."""
        self._changed()
        if self.server_tasks.is_local(task_id):
            await self.server_tasks.stop(task_id)
        else:
            await self.notifier.notify(TaskStopRequested(task_id=task_id))

    async def stop_task(self, req: ops.TaskRef) -> None:
        """End the current run (queued, waiting or running) as stopped: recorded
        stopped first, then the devices are told, then its server side is ended. So a
        device hears of the stop before (or as) its client side sees the server go, and
        a device that asks is told the run ended: the run's end is never a device's
        failure (docs/edge.md, "Runs end")."""
        task = await self.store.get_task(req.task_id)
        if not task.running and task.state is not TaskState.QUEUED:
            raise conflict(f"task {task.task_id} is not running")
        await self.store.set_task_state(
            task.task_id, running=False, state=TaskState.STOPPED, reason="stopped by the operator"
        )
        self._changed()
        await self.notifier.notify(
            TaskChanged(task_id=task.task_id, running=False, state="stopped", run=task.run)
        )
        if task.running:
            await self._end_server(task.task_id)
        self.event(ops.STOP_TASK, "Task stopped on cloud", task_id=task.task_id)
        self._soon(self.scheduler.dequeue())

    async def list_runs(self, req: ops.ListRuns) -> list[dict[str, Any]]:
        """The task's runs, newest first, a page of ``limit`` below ``before``."""
        await self.store.get_task(req.task_id)  # 404 for an unknown task
        runs = await self.store.list_runs(req.task_id, limit=req.limit, before=req.before)
        return [run_view(run) for run in runs]

    async def get_run(self, req: ops.RunRef) -> dict[str, Any]:
        """One run with each device's part in it."""
        run = await self.store.get_run(req.task_id, req.run)
        return run_view(run, await self.store.list_run_devices(req.task_id, req.run))

    async def _run_of(self, task_id: str, run: int | None) -> int | None:
        """The run a read is about: ``run`` (404 if the task has none such) or the
        task's current one (None: it never ran)."""
        if run is None:
            return (await self.store.get_task(task_id)).run
        await self.store.get_run(task_id, run)
        return run

    async def register_flower_node(self, req: ops.RegisterFlowerNode) -> dict[str, Any]:
        """Let a selected device's SuperNode into a flower-app run: the task must be a
        running flower-app whose criteria this device meets (else 409 / 403)."""
        task = await self.store.get_task(req.task_id)
        if task.kind is not TaskKind.FLOWER_APP or not task.running:
            raise conflict(f"task {task.task_id} is not a running flower-app task")
        attributes = await self._device_attributes(req.user_id)
        if not self.criteria.matches(task.selection_criteria, attributes):
            raise AgataError(
                ErrorCode.FORBIDDEN,
                f"device {req.user_id} does not meet the selection criteria of task {task.task_id}",
            )
        run = self.server_tasks.flower_run(task.task_id)
        if run is None:
            raise AgataError(
                ErrorCode.UNAVAILABLE,
                f"task {task.task_id}: its Flower run is not on this cloud replica",
            )
        node_id = await run.register_node(req.user_id, req.public_key)
        self.event(
            ops.REGISTER_FLOWER_NODE,
            f"SuperNode key of {req.user_id} registered" if node_id else "no node auth",
            task_id=task.task_id,
        )
        # The flwr the SuperLink runs: a device's must have the same major.minor.
        version = installed_flower() or ""
        return {"node_auth": run.node_auth, "node_id": node_id, "flower_version": version}

    async def client_requesting_task(
        self, req: ops.ClientRequestingTask
    ) -> RawJson | list[dict[str, Any]]:
        """The running tasks whose selection criteria this device meets (their offers,
        encoded: kept between polls while neither the tasks nor the device change)."""
        attributes = await self._device_attributes(req.user_id)
        now = time.monotonic()
        if now - self._last_touch.get(req.user_id, -TOUCH_SECONDS) >= TOUCH_SECONDS:
            self._last_touch[req.user_id] = now
            self._touch_pending.add(req.user_id)
            if self._touch_flusher is None or self._touch_flusher.done():
                self._touch_flusher = asyncio.create_task(self._flush_touches_soon())
        running = await self._running_tasks()  # first: a re-read may end the cached offers
        matched = self.offers.matches(req.user_id, attributes)
        if matched is None:
            matched = tuple(
                task.task_id
                for task in running
                if self.criteria.matches(task.selection_criteria, attributes)
            )
            self.offers.remember_matches(req.user_id, attributes, matched)
        if self.legacy_devices and req.legacy is not False:
            # Expanded for this device: never shared through the reply cache.
            by_id = {task.task_id: task for task in running}
            return self._legacy_offers([by_id[task_id] for task_id in matched], attributes)
        reply = self.offers.reply(False, matched)
        if reply is None:
            by_id = {task.task_id: task for task in running}
            offers = [self._offer(by_id[task_id]) for task_id in matched]
            reply = RawJson(encode(offers))
            self.offers.remember_reply(False, matched, reply)
        return reply

    def _offer(self, task: Task) -> dict[str, Any]:
        """A device's offer; a flower-app's says whether its run authenticates nodes and
        which flwr it runs (the device then skips the key when there is none)."""
        offer = offer_view(task)
        if task.kind is TaskKind.FLOWER_APP:
            offer["flower"] = {
                "node_auth": self.server_tasks.flower_tls is not None,
                "version": installed_flower() or "",
            }
        return offer

    def _legacy_offers(self, tasks: list[Task], attributes: dict[str, Any]) -> list[dict[str, Any]]:
        """Offers for a device of the original system: client arguments expanded for it.

        A task whose arguments use a placeholder this device has no value for is left
        out (that device could not run it as configured), with a rate-limited warning.
        """
        offers = []
        for task in tasks:
            try:
                offers.append(legacy_offer_view(task, attributes))
            except AgataError as exc:
                self._unexpandable.warn(
                    "task %s is not offered to device %s of the original system: %s",
                    task.task_id,
                    attributes.get("user_id"),
                    exc.message,
                )
        return offers

    async def get_task_metrics(self, req: ops.TaskMetricsQuery) -> list[dict[str, Any]]:
        """The metrics of a run (default: the current or last one)."""
        run = await self._run_of(req.task_id, req.run)
        return [
            {
                "round": m.round,
                "source": m.source,
                "metrics": dict(m.metrics),
                "time": m.time,
                "run": m.run,
            }
            for m in await self.store.list_metrics(req.task_id, run=run)
        ]

    async def get_task_logs(self, req: ops.TaskLogsQuery) -> list[dict[str, Any]]:
        """The last log lines of a run (default: the current or last one)."""
        run = await self._run_of(req.task_id, req.run)
        return [
            {
                "seq": x.seq,
                "source": x.source,
                "stream": x.stream,
                "text": x.text,
                "time": x.time,
                "run": x.run,
            }
            for x in await self.store.tail_logs(req.task_id, req.limit, run=run)
        ]

    async def get_task_events(self, req: ops.TaskEventsQuery) -> list[dict[str, Any]]:
        """The newest ``limit`` events (of a task, after ``since``), oldest first; of
        a task's run ``run`` (with the task's events of no run) when given."""
        run = req.run
        if run is not None:
            if req.task_id is None:
                raise invalid("run: give the task_id of the run too")
            await self.store.get_run(req.task_id, run)
        elif req.task_id is not None:
            try:
                run = (await self.store.get_task(req.task_id)).run
            except AgataError as exc:  # a deleted task's events stay readable
                if exc.code is not ErrorCode.NOT_FOUND:
                    raise
        events = await self.store.list_events(req.task_id, since=req.since, limit=10_000, run=run)
        return [
            {
                "time": e.time,
                "service": e.service,
                "function": e.function,
                "event": e.event,
                "task_id": e.task_id,
                "user_id": e.user_id,
                "run": e.run,
                **dict(e.data),
            }
            for e in events[-req.limit :]
        ]

    async def get_task_devices(self, req: ops.TaskRef) -> dict[str, Any]:
        task = await self.store.get_task(req.task_id)
        matching = [
            d.user_id
            for d in await self.store.list_devices()
            if self.criteria.matches(task.selection_criteria, device_attributes(d))
        ]
        states = [device_task_view(s) for s in await self.store.list_task_devices(req.task_id)]
        return {"matching": matching, "states": states}

    async def validate_criteria(self, req: ops.ValidateCriteria) -> dict[str, Any]:
        """Whether the expression is valid, which names no device has, which comparisons
        cannot match by type, and how many devices it matches now (of how many, how
        many of those online)."""
        try:
            criteria = compile_criteria(req.selection_criteria)
        except AgataError as exc:
            return {
                "valid": False,
                "error": exc.message,
                "unknown_names": [],
                "type_mismatches": [],
                "matching": 0,
                "matching_online": 0,
                "devices": 0,
            }
        fleet = await self.store.list_devices()
        devices = [device_attributes(d) for d in fleet]
        known = set(DEVICE_FIELDS).union(*(d.keys() for d in devices))
        matched = [d for d, names in zip(fleet, devices, strict=True) if criteria.matches(names)]
        return {
            "valid": True,
            "error": "",
            "unknown_names": sorted(criteria.names - known),
            "type_mismatches": type_mismatches(req.selection_criteria, devices),
            "matching": len(matched),
            "matching_online": sum(
                1 for d in matched if seconds_since(d.last_seen) <= ONLINE_SECONDS
            ),
            "devices": len(devices),
        }

    async def get_overview(self, req: ops.Empty) -> dict[str, Any]:
        devices = await self.store.list_devices()
        tasks = await self.store.list_tasks()
        failures: list[dict[str, Any]] = [
            {
                "task_id": t.task_id,
                "user_id": None,
                "status": "failed",
                "reason": t.state_reason,
                "time": t.updated_at,
                "quarantined_until": None,
            }
            for t in tasks
            if t.state == TaskState.FAILED
        ] + [
            {
                "task_id": s.task_id,
                "user_id": s.user_id,
                "status": str(s.status),
                "reason": s.reason,
                "time": s.updated_at,
                "quarantined_until": s.quarantined_until,
            }
            for s in await self.store.list_device_failures(RECENT_FAILURES)
        ]
        failures.sort(key=lambda f: datetime.fromisoformat(f["time"]))
        online = sum(1 for d in devices if seconds_since(d.last_seen) <= ONLINE_SECONDS)
        return {
            "devices_total": len(devices),
            "devices_online": online,
            "devices_offline": len(devices) - online,
            "tasks_total": len(tasks),
            "tasks_running": sum(1 for t in tasks if t.running),
            "recent_failures": failures[-RECENT_FAILURES:],
            "containment": sandbox.describe() if (sandbox := self.server_tasks.sandbox) else "",
        }

    async def check_password(self, req: ops.CheckDownloadPassword) -> dict[str, bool]:
        """Legacy devices download with the task's username and the password their offer
        carried, or the task's own password (gateway only; see
        :mod:`agata.cloud.credentials.download_passwords`)."""
        task = await self.store.get_task(req.task_id)
        return {"ok": await self.download_passwords.check(task, req.username, req.password)}


def _task_record(task: Task, progress: TaskProgress | None) -> dict[str, Any]:
    run = progress.run if progress is not None else None
    return task_view(
        task,
        last_round=run.last_round if run else None,
        last_acc=_acc(run.last_metrics) if run else None,
        devices_running=list(progress.devices_running) if progress is not None else [],
        run_state=str(run.state) if run else None,
    )


def _acc(metrics: Any) -> float | None:
    """The accuracy among a round's metrics, sent as ``acc`` or ``accuracy``."""
    value = metrics.get("acc", metrics.get("accuracy"))
    return float(value) if isinstance(value, int | float) else None


def task_filter(q: str) -> Callable[[Task], bool]:
    """``q`` of ``rpc_exec_query_tasks`` as a test: blank-separated terms that must all
    hold, each a state word, ``tag:NAME`` or a part of the task id. Tasks are few (an
    operator creates each), so they are filtered in memory."""
    states = {s.value for s in TaskState}
    wanted_states: set[str] = set()
    tags: list[str] = []
    parts: list[str] = []
    for token in q.split():
        lowered = token.lower()
        if lowered in states:
            wanted_states.add(lowered)
        elif lowered.startswith("tag:") and len(token) > 4:
            tags.append(token[4:])
        elif ":" in token:
            raise invalid(f"q: {token!r}: unknown prefix (tag:NAME, or a state or id part)")
        else:
            parts.append(token)
    if len(wanted_states) > 1:
        raise invalid(f"q: a task is in one state, not all of {sorted(wanted_states)}")

    def matches(task: Task) -> bool:
        return (
            all(str(task.state) == state for state in wanted_states)
            and all(tag in task.tags for tag in tags)
            and all(part in task.task_id for part in parts)
        )

    return matches
