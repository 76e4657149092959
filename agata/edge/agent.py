"""The edge agent: finds the tasks this device may run, runs them, reports on them.

One asyncio loop, one process::

    report attributes (when changed) -> ask for compatible tasks -> apply the policy
      -> download the bundle (verified, cached) -> start the client side -> supervise

- The loop sleeps on one ``wake`` event with the poll interval as timeout: idle means
  idle, and a push event, a finished task or shutdown wakes it at once. A push event
  that carries the cloud's offers for this device stands for the next poll's answer
  (unless the device's attributes changed since); the periodic poll stays.
- Failover: when a client side reports an error or exits without "Finished", the task
  is blocked on this device at once (written as a quarantine) and the next compatible
  task is started at once from the offers already known, before the cloud is asked
  again. The failure is then judged against the task's run (:mod:`agata.edge.run_ends`):
  a client side that went down with its run (stopped, finished or failed on the cloud)
  ended "with the run" and its block is lifted; only a failure while the run goes on is
  reported ``failed`` and stays in quarantine.
- "Finished": the agent asks the cloud for work at once; the same task version is not
  run again while the cloud keeps offering it.
- A running task that the cloud no longer offers (stopped, criteria changed) is
  stopped; a task whose version changed is restarted with the new bundle.
- Each started process group is recorded in the local state; the next start of an
  agent that was killed ends whatever is left of them.

Events (the experiments' timings) go to ``on_event(function, event, **fields)``:
``update device info``, ``request task``, ``download task`` and ``start task on
device`` as ``start``/``end`` pairs; ``task finished`` and ``task failed`` as ``end``;
``switch task`` from ``start`` (failure seen) to ``end`` (next client spawned).

Every task-state change reported to the cloud also goes to the device's hook program
when one is configured (:mod:`agata.edge.hooks`; never awaited by the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agata.edge.arguments import expand_client_arguments, placeholder_values
from agata.edge.bundle_cache import BundleCache
from agata.edge.cloud_client import CloudClient
from agata.edge.device_info import DeviceInfo, DeviceSource
from agata.edge.hooks import HookRunner, event_of_report
from agata.edge.local_state import LocalState, QuarantineEntry, RunningRecord
from agata.edge.policy import choose_tasks
from agata.edge.push import PushListener, pushed_offers
from agata.edge.reports import DeviceReport, ReportSender
from agata.edge.run_ends import (
    ENDED_WITH_THE_RUN,
    MAX_OUTPUT_LINES,
    RunEnds,
    bounded_output,
    offers_show_end,
)
from agata.edge.task_runs import TaskRun, recover_leftovers
from agata.edge.wheelhouse import WheelhouseMirror
from agata.errors import AgataError, ErrorCode
from agata.files import make_private_dir
from agata.flower.supernode import prepare_supernode
from agata.protocol.offers import TaskOffer
from agata.protocol.operations import REGISTER_FLOWER_NODE
from agata.retry import Backoff, StateLog, is_transient
from agata.runtime.limits import Limits
from agata.runtime.messages import Error, Info, Model, OutputLine, Print, TaskMessage
from agata.runtime.process import ProcessLauncher
from agata.runtime.sandbox import TaskSandbox, default_task_dir
from agata.runtime.supervisor import TaskProcess
from agata.settings import EdgeSettings

__all__ = ["Agent", "EventCallback", "RunningTask"]

logger = logging.getLogger(__name__)

EventCallback = Callable[..., None]
"""``on_event(function, event, **fields)``; fields hold ``time`` and ``user_id``, and
``task_id`` for task steps."""

#: The offer's kind of a Flower App task (its client side is a SuperNode).
FLOWER_APP = "flower-app"


@dataclass(frozen=True, slots=True)
class RunningTask:
    """A client side this agent runs (see :meth:`Agent.running_tasks`)."""

    task_id: str
    version: str
    pid: int | None
    state: str
    started_at: float
    round: int | None
    metrics: dict[str, float] = field(default_factory=dict)


class Agent:
    """The device's agent.

    Args:
        settings: ``cloud_url``, ``data_dir``, ``request_interval``, ``policy``,
            ``max_tasks``, ``quarantine_seconds``, ``download_attempts``, ...
        device: fixed attributes, or a :class:`DeviceSource` re-read every cycle.
        credential: the device credential (None: anonymous, for ``--legacy-devices``).
        on_event: receives the timing events (see the module docstring).
        push: listen to the device's event stream (else poll only).
        grace: seconds a stopped client side gets between SIGTERM and SIGKILL.
        client: a ready :class:`CloudClient` (tests); one is built from the settings.
        launcher: the runtime's OS boundary (tests); without one the agent builds a
            :class:`TaskSandbox` from the settings (containment, task user, limits).
    """

    def __init__(
        self,
        settings: EdgeSettings,
        device: DeviceInfo | DeviceSource,
        *,
        credential: str | None = None,
        on_event: EventCallback | None = None,
        push: bool = True,
        grace: float = 5.0,
        client: CloudClient | None = None,
        launcher: ProcessLauncher | None = None,
    ) -> None:
        self.settings = settings
        self._device = device
        self._on_event = on_event if settings.register_events else None
        self._push_enabled = push
        self._grace = grace
        self._launcher = launcher
        self.sandbox: TaskSandbox | None = None
        if launcher is None:
            self.sandbox = TaskSandbox(
                f"edge:{settings.data_dir.resolve()}",
                task_user=settings.task_user,
                task_dir=settings.task_dir or default_task_dir(settings.data_dir / "edge"),
                limits=Limits.from_mapping(settings.task_limits),
                index_options=settings.env_index_options,
                env_timeout=settings.env_timeout,
                env_max_bytes=settings.env_cache_mb * 1024 * 1024,
                allow_direct=settings.env_allow_direct,
                spare=True,  # dispatch and failover skip the cgroup join
            )
            self._launcher = self.sandbox.launcher
        self._owns_client = client is None
        self.client = client or CloudClient(
            settings.cloud_url,
            credential=credential,
            timeout=settings.rpc_timeout,
            ca_file=settings.ca_file,
        )
        self.edge_dir = settings.data_dir / "edge"
        self.work_root = self.edge_dir / "work"
        self.cache = BundleCache(
            self.edge_dir / "bundles", self.client, attempts=settings.download_attempts
        )
        self.wheelhouse = WheelhouseMirror(self.client, self.edge_dir / "wheelhouse")
        if self.sandbox is not None:  # environments are built from the cloud's wheels too
            self.sandbox.wheelhouse = self.wheelhouse.find_links
        self.state = LocalState.load(self.edge_dir / "state.json")
        self.hooks: HookRunner | None = None
        if settings.hook_command:  # a bad command stops here, with the reason
            self.hooks = HookRunner.from_command(settings.hook_command, settings.hook_timeout)

        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        self._runs: dict[str, TaskRun] = {}
        self._ending: set[TaskRun] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._failovers: set[asyncio.Task[Any]] = set()
        self._offers: list[TaskOffer] = []
        self._reported: DeviceInfo | None = None
        self._switch: tuple[str, float] | None = None
        self._started = False
        self._health = StateLog(logger, "agent")
        self._reports: ReportSender | None = None
        self.push: PushListener | None = None
        self._pushed: list[TaskOffer] | None = None  # offers of the last push event
        self.run_ends = RunEnds()  # what the agent learned of runs ending (run_ends.py)
        self._judged: dict[str, TaskRun] = {}  # failed client sides awaiting their verdict
        self.polls = 0
        self.pushed_answers = 0  # cycles that took a push event's offers (no poll)

    # -- public API -------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`shutdown`; then stop every client side and return."""
        if self._started:
            raise AgataError(ErrorCode.CONFLICT, "this agent already ran")
        self._started = True
        make_private_dir(self.settings.data_dir)
        make_private_dir(self.edge_dir)
        if self.sandbox is not None:
            logger.info("client sides: %s", self.sandbox.describe())
        device = self._current_device()
        self._recover()
        if self.sandbox is not None:
            await self.sandbox.prepare()
        self._reports = ReportSender(self.client, device.user_id)
        if self.hooks is not None:
            self.hooks.start(device.user_id)
        workers = [
            asyncio.create_task(self._loop(), name="agent loop"),
            asyncio.create_task(self._reports.run(), name="agent reports"),
        ]
        if self._push_enabled:
            self.push = PushListener(
                self.client,
                device.user_id,
                on_event=self._on_push,
                on_connected=self._wake.set,
            )
            workers.append(asyncio.create_task(self.push.run(), name="agent push"))
        stop = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait([stop, workers[0]], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self._stop_everything()
            if self.sandbox is not None:
                self.sandbox.close()
            await self._reports.flush(timeout=1.0)
            if self.hooks is not None:
                await self.hooks.close(timeout=min(self.settings.hook_timeout, 2.0))
            if self._owns_client:
                await self.client.aclose()
            logger.info("agent stopped")
        loop = workers[0]
        crash = loop.exception() if loop.done() and not loop.cancelled() else None
        if crash is not None:
            raise crash

    def shutdown(self) -> None:
        """Ask :meth:`run` to stop its tasks and return (safe from a signal handler)."""
        self._stopping.set()
        self._wake.set()

    def poll_now(self) -> None:
        """Ask the cloud for tasks now instead of at the next poll."""
        self._wake.set()

    def running_tasks(self) -> list[RunningTask]:
        return [
            RunningTask(
                task_id=run.offer.task_id,
                version=run.offer.version,
                pid=run.process.pid,
                state=str(run.process.state),
                started_at=run.started_at,
                round=run.round,
                metrics=dict(run.metrics),
            )
            for run in self._runs.values()
        ]

    def quarantine(self) -> list[QuarantineEntry]:
        """Tasks in quarantine on this device now."""
        now = time.time()
        return [entry for entry in self.state.quarantine.values() if entry.active(now)]

    def clear_quarantine(self, task_id: str | None = None) -> int:
        count = self.state.clear_quarantine(task_id)
        if count:
            self._wake.set()
        return count

    # -- the loop -----------------------------------------------------------------------

    async def _loop(self) -> None:
        interval = self.settings.request_interval
        backoff = Backoff(min(0.5, interval), interval)
        while not self._stopping.is_set():
            self._wake.clear()
            delay = interval
            try:
                await self._cycle()
                backoff.reset()
                self._health.set("working")
            except AgataError as exc:
                delay = backoff.after(exc.retry_after)  # a busy cloud said how long
                detail = exc.message
                if exc.code is ErrorCode.UNAUTHENTICATED and self.client.credential:
                    detail += (
                        "; if an operator revoked this device, enroll it again with a new "
                        "enrollment token (agata device enroll)"
                    )
                self._health.set(f"cannot work with the cloud ({exc.code.name})", detail)
            except Exception:
                delay = backoff.next()
                logger.exception("agent cycle failed")
            if self.state.quarantine:  # wake up when the next quarantine ends
                ends = min(entry.until for entry in self.state.quarantine.values())
                delay = min(delay, max(ends - time.time(), 0.0) + 0.01)
            await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _cycle(self) -> None:
        for entry in self.state.expire_quarantine():
            logger.info("task %s: quarantine ended", entry.task_id)
        device = self._current_device()
        pushed, self._pushed = self._pushed, None
        if device != self._reported:
            pushed = None  # the cloud answered for the attributes it had: ask again
            self._event("update device info", "start")
            await self.client.update_user_info(device)
            self._event("update device info", "end")
            self._reported = device
        self._event("request task", "start")
        if pushed is not None:
            # The cloud's answer for this device, sent with the push event (push.py).
            offers = pushed
            self.pushed_answers += 1
            self._event("request task", "end", tasks=[o.task_id for o in offers], pushed=True)
            self._take_offers(offers)
            await self._reconcile()
            return
        try:
            offers = await self.client.requesting_task(device.user_id)
        except AgataError as exc:
            if exc.code is not ErrorCode.NOT_FOUND:
                raise
            # The cloud forgot this device (a new database): introduce it again.
            logger.info("the cloud does not know this device; sending its attributes again")
            await self.client.update_user_info(device)
            offers = await self.client.requesting_task(device.user_id)
        self.polls += 1
        self._event("request task", "end", tasks=[offer.task_id for offer in offers])
        self._take_offers(offers)
        await self._reconcile()

    def _take_offers(self, offers: list[TaskOffer]) -> None:
        """The cloud's answer now: a task it leaves out that runs here, or whose failure
        is being judged, has no run any more (:mod:`agata.edge.run_ends`)."""
        self._offers = offers
        self.run_ends.record_absent(offers, [*self._runs, *self._judged])

    def _current_device(self) -> DeviceInfo:
        """The device's attributes, with ``containment`` (the sandbox's kind) added to
        its extra attributes: the cloud's device record says how this device contains
        its tasks, and criteria may ask for it."""
        device = self._device.current() if isinstance(self._device, DeviceSource) else self._device
        if self.sandbox is None or "containment" in device.extra:
            return device
        extra = {**device.extra, "containment": str(self.sandbox.kind)}
        return dataclasses.replace(device, extra=extra)

    # -- deciding what runs -----------------------------------------------------------

    async def _reconcile(self) -> None:
        """Make the running client sides match the policy over the known offers."""
        async with self._lock:
            offered = {offer.task_id: offer for offer in self._offers}
            self.state.forget_finished(set(self.state.finished) - set(offered))
            for task_id, entry in list(self.state.quarantine.items()):
                offer = offered.get(task_id)
                if offer is not None and offer.version != entry.version:
                    # A new bundle version is a new task version: its quarantine ends.
                    self.state.clear_quarantine(task_id)
                    logger.info(
                        "task %s: quarantine of v%s ended: v%s is offered",
                        task_id,
                        entry.version,
                        offer.version,
                    )
            for task_id, run in list(self._runs.items()):
                offer = offered.get(task_id)
                if offer is None:
                    self._stop_run(run, "no longer offered by the cloud")
                elif offer.argv != run.offer.argv:
                    self._stop_run(run, "its client arguments changed on the cloud")
                elif offer.version != run.offer.version:
                    self._stop_run(
                        run, f"changed on the cloud (v{run.offer.version} -> v{offer.version})"
                    )
            tried: set[str] = set()
            transient: AgataError | None = None
            while not self._stopping.is_set():
                wanted = choose_tasks(
                    self.settings.policy,
                    self._offers,
                    running=self._runs.keys(),
                    blocked=lambda offer: offer.task_id in tried or self._blocked(offer),
                    max_tasks=self.settings.max_tasks,
                )
                fresh = [offer for offer in wanted if offer.task_id not in self._runs]
                if not fresh:
                    break
                for offer in fresh:
                    tried.add(offer.task_id)
                    try:
                        await self._start(offer)
                    except AgataError as exc:
                        transient = exc
            if transient is not None:
                raise transient

    def _blocked(self, offer: TaskOffer) -> bool:
        if self.state.quarantined(offer.task_id, offer.version) is not None:
            return True
        return self.state.finished.get(offer.task_id) == offer.version

    async def _start(self, offer: TaskOffer) -> bool:
        """Download and start one task; False (quarantined or skipped) when it cannot.

        Raises AgataError only when the cloud is unreachable (try again later).
        """
        task_id = offer.task_id
        try:
            values = placeholder_values(self._current_device(), offer)
            argv = expand_client_arguments(offer.argv, values)
        except AgataError as exc:
            self._fail(offer, exc.message)
            return False
        self._report(DeviceReport(task_id, "downloading", run=offer.run))
        self._event("download task", "start", task_id=task_id)
        try:
            bundle = await self.cache.ensure(offer)
        except AgataError as exc:
            self._event("download task", "end", task_id=task_id, error=exc.message)
            if is_transient(exc):
                raise
            if exc.code in (ErrorCode.UNAUTHENTICATED, ErrorCode.FORBIDDEN):
                logger.warning("task %s: the cloud refused the download: %s", task_id, exc)
                return False
            self._fail(offer, f"download failed: {exc.message}")
            return False
        self._event("download task", "end", task_id=task_id)
        work = self.work_root / f"task_{task_id}"
        self._event("start task on device", "start", task_id=task_id)
        run = TaskRun(offer, time.time())
        try:
            limits, python = None, None
            if self.sandbox is not None:
                if offer.kind != FLOWER_APP:  # a SuperNode runs on the agent's flwr
                    python = await self.sandbox.python_for(
                        bundle, lambda text: logger.info("task %s: %s", task_id, text)
                    )
                bundle, work = self.sandbox.place("client", task_id, bundle, work)
                task_limits = Limits.from_mapping(offer.limits, ignore_unknown=True)
                limits = self.sandbox.limits_for(task_limits)
            else:
                work.mkdir(parents=True, exist_ok=True)
            if offer.kind == FLOWER_APP:
                run.process = await self._supernode(run, work, argv, limits)
            else:
                run.process = TaskProcess.for_side(
                    bundle,
                    "client",
                    work,
                    argv,
                    on_message=lambda message: self._on_message(run, message),
                    launcher=self._launcher,
                    grace=self._grace,
                    name=f"task {task_id} client",
                    limits=limits,
                    python=python,
                )
            await run.process.start()
        except AgataError as exc:
            self._event("start task on device", "end", task_id=task_id, error=exc.message)
            if offer.kind == FLOWER_APP and is_transient(exc):
                raise  # the cloud did not take the node key now: try again later
            self._fail(offer, f"client side could not start: {exc.message}")
            return False
        # No await from here on: a message of the new process cannot arrive before
        # the run is registered.
        pid, pgid = run.process.pid, run.process.pgid
        assert pid is not None and pgid is not None
        self._event("start task on device", "end", task_id=task_id, pid=pid)
        self._runs[task_id] = run
        self.state.count("started")
        self.state.record_running(
            RunningRecord(task_id, offer.version, pid, pgid, run.process.token, run.started_at)
        )
        if self._switch is not None:
            failed, _ = self._switch
            self._switch = None
            self._event("switch task", "end", task_id=task_id, from_task=failed)
        logger.info("task %s v%s: client side started (pid %d)", task_id, offer.version, pid)
        self._report(DeviceReport(task_id, "running", run=offer.run))
        run.watcher = self._spawn(self._watch(run), f"watch {task_id}")
        if not any(other.offer.task_id == task_id for other in self._ending):
            self.cache.prune(task_id, keep={offer.version})
        return True

    async def _supernode(
        self, run: TaskRun, work: Path, argv: list[str], limits: Limits | None
    ) -> TaskProcess:
        """The client side of a flower-app task: ``flower-supernode`` for the run, with a
        node key the cloud registered (:func:`~agata.flower.supernode.prepare_supernode`).
        It never reports "Finished": it is stopped when the cloud stops offering the task."""
        offer = run.offer
        user_id = self._current_device().user_id

        async def register(public_key: str) -> Any:
            body = {"user_id": user_id, "task_id": offer.task_id, "public_key": public_key}
            return await self.client.call(REGISTER_FLOWER_NODE, body)

        launch = await prepare_supernode(
            work,
            argv,
            device_id=user_id,
            superlink=f"{offer.host}:{offer.port}",
            ca_file=self.settings.ca_file,
            register=register,
            owner=self._task_owner(),
            offered=offer.flower.model_dump() if offer.flower is not None else None,
        )
        return TaskProcess(
            work,
            "supernode.py",  # names the process only
            launch.arguments,
            program=launch.program,
            env=launch.env,
            on_message=lambda message: self._on_message(run, message),
            launcher=self._launcher,
            grace=self._grace,
            name=f"task {offer.task_id} supernode",
            limits=limits,
        )

    def _task_owner(self) -> tuple[int, int] | None:
        user = self.sandbox.containment.task_user if self.sandbox is not None else None
        return (user.uid, user.gid) if user is not None else None

    # -- what the client sides say ----------------------------------------------------

    async def _on_message(self, run: TaskRun, message: TaskMessage) -> None:
        task_id = run.offer.task_id
        if isinstance(message, Model):
            run.round = message.round
            run.metrics = dict(message.metrics)
            self._report(
                DeviceReport(
                    task_id,
                    "running",
                    round=message.round,
                    metrics=message.metrics,
                    run=run.offer.run,
                )
            )
        elif isinstance(message, Error):
            self._task_failed(run, message.exception)
        elif isinstance(message, Info):
            if message.is_finished:
                self._task_finished(run)
            else:
                logger.info("task %s: %s", task_id, message.info)
        elif isinstance(message, Print):
            logger.info("task %s: %s", task_id, message.message)
        elif isinstance(message, OutputLine):
            logger.debug("task %s (%s): %s", task_id, message.stream, message.text)

    async def _watch(self, run: TaskRun) -> None:
        outcome = await run.process.wait()
        pid = run.process.pid
        self.state.forget_running(run.offer.task_id, pid)
        self._ending.discard(run)
        if run.ended:
            return
        if outcome.ok:
            self._task_finished(run)
        else:
            self._task_failed(run, outcome.reason)

    def _task_failed(self, run: TaskRun, reason: str) -> None:
        """A client side failed: block its task version now (written as a quarantine,
        fsynced after the next task's spawn: :meth:`_failover`), fail over at once, and
        judge the failure against the task's run before anyone is told (:meth:`_judge`)."""
        if not self._end_run(run):
            return
        task_id = run.offer.task_id
        failed_at = time.time()
        stopping = self._stopping.is_set()
        self.state.add_quarantine(
            task_id,
            run.offer.version,
            reason,
            self.settings.quarantine_seconds,
            failed_at,
            sync_later=not stopping,
        )
        if stopping:  # the agent is going: no verdict to wait for
            self._failure_verdict(run, reason, failed_at)
            return
        logger.info("task %s: client side failed (%s); judging it against its run", task_id, reason)
        # Failover: switch at once, from the offers already known.
        self._switch = (task_id, failed_at)
        self._event("switch task", "start", task_id=task_id)
        failover = self._spawn(self._failover(), f"failover from {task_id}")
        self._failovers.add(failover)
        failover.add_done_callback(self._failovers.discard)
        self._judged[task_id] = run
        self._spawn(self._judge(run, reason, failed_at, failover), f"judge {task_id}")

    async def _judge(
        self, run: TaskRun, reason: str, failed_at: float, failover: asyncio.Task[None]
    ) -> None:
        """Decide whether ``run``'s failure was its run ending (module docstring of
        :mod:`agata.edge.run_ends`) and say so; a cancelled judge (the agent stops)
        counts it a failure. The cloud is asked once the failover spawned the next
        task (or the grace is over), so the question never slows the failover down."""
        task_id = run.offer.task_id
        try:
            await asyncio.wait({failover}, timeout=self.settings.run_end_grace)
            ended = await self._run_ended(run, failed_at)
        except asyncio.CancelledError:
            self._judged.pop(task_id, None)
            self._failure_verdict(run, reason, failed_at)
            raise
        self._judged.pop(task_id, None)
        if ended:
            self._ended_with_run(run, reason, failed_at)
        else:
            self._failure_verdict(run, reason, failed_at)

    async def _run_ended(self, run: TaskRun, failed_at: float) -> bool:
        """True once the agent knows ``run``'s run is over; False when the cloud still
        offers it as it was at the end of the grace period (or cannot be asked then)."""
        task_id = run.offer.task_id
        deadline = failed_at + self.settings.run_end_grace
        asked = False
        while True:
            if self.run_ends.ended_since(task_id, run.started_at):
                return True
            last = time.time() >= deadline
            if not asked or last:
                asked = True
                try:
                    offers = await self.client.requesting_task(self._user_id())
                except AgataError as exc:
                    logger.info("task %s: cannot ask the cloud about its run: %s", task_id, exc)
                else:
                    if offers_show_end(run.offer, offers):
                        return True
                if last:
                    return self.run_ends.ended_since(task_id, run.started_at)
            await self.run_ends.wait(deadline - time.time())

    def _failure_verdict(self, run: TaskRun, reason: str, failed_at: float) -> None:
        """The client side failed while its run went on: report it, with its last output
        lines, and its quarantine (the ``task failed`` event carries ``failed_at``)."""
        task_id = run.offer.task_id
        logger.warning("task %s failed: %s", task_id, reason)
        self.state.count("failed")
        self._event("task failed", "end", at=failed_at, task_id=task_id, reason=reason)
        output = tuple(bounded_output(run.process.tail(MAX_OUTPUT_LINES)))
        self._report(
            DeviceReport(task_id, "failed", reason=reason, log_lines=output, run=run.offer.run)
        )
        entry = self.state.quarantined(task_id, run.offer.version)
        if entry is None:  # lifted meanwhile (the operator, a new version)
            return
        logger.warning(
            "task %s: in quarantine for %.0f s: %s", task_id, entry.until - entry.since, reason
        )
        self._report(
            DeviceReport(
                task_id,
                "quarantined",
                reason=reason,
                quarantined_until=entry.until,
                run=run.offer.run,
            )
        )

    def _ended_with_run(self, run: TaskRun, reason: str, failed_at: float) -> None:
        """The client side went down with its run: not a failure, no quarantine."""
        task_id = run.offer.task_id
        entry = self.state.quarantine.get(task_id)
        if entry is not None and entry.version == run.offer.version and entry.since == failed_at:
            self.state.stats["quarantined"] -= 1
            self.state.clear_quarantine(task_id)
        logger.info("task %s: client side %s (%s)", task_id, ENDED_WITH_THE_RUN, reason)
        self.state.count("stopped")
        reason = f"{ENDED_WITH_THE_RUN} ({reason})"
        self._report(DeviceReport(task_id, "stopped", reason=reason, run=run.offer.run))
        self._wake.set()  # a new run of it may be offered already

    def _task_finished(self, run: TaskRun) -> None:
        if not self._end_run(run):
            return
        task_id = run.offer.task_id
        logger.info("task %s finished on this device", task_id)
        self.state.count("finished")
        self.state.mark_finished(task_id, run.offer.version)
        self._event("task finished", "end", task_id=task_id)
        self._report(
            DeviceReport(
                task_id, "finished", round=run.round, metrics=run.metrics, run=run.offer.run
            )
        )
        self._wake.set()

    def _fail(self, offer: TaskOffer, reason: str, *, sync_later: bool = False) -> None:
        """Quarantine ``offer`` on this device and tell the cloud (``sync_later``: see
        :meth:`LocalState.add_quarantine`)."""
        self.state.count("failed")
        seconds = self.settings.quarantine_seconds
        entry = self.state.add_quarantine(
            offer.task_id, offer.version, reason, seconds, sync_later=sync_later
        )
        logger.warning("task %s: in quarantine for %.0f s: %s", offer.task_id, seconds, reason)
        self._report(
            DeviceReport(
                offer.task_id,
                "quarantined",
                reason=reason,
                quarantined_until=entry.until,
                run=offer.run,
            )
        )

    async def _failover(self) -> None:
        try:
            await self._reconcile()
        except AgataError as exc:
            # The cloud is away: the switch ends when a later cycle starts the next task.
            logger.info("failover: %s; the next cycle tries again", exc.message)
        else:
            self._switch = None  # started the next task (event sent) or there is none
        finally:
            self._sync_state()  # the quarantine, now that the next task is spawned
        self._wake.set()  # and refresh the offers

    def _sync_state(self) -> None:
        try:
            self.state.sync()
        except OSError as exc:  # a full or failing disk: the agent goes on, says so
            logger.error("the agent's state could not be made durable: %s", exc)

    def _end_run(self, run: TaskRun) -> bool:
        """Mark ``run`` as over (once): it no longer counts as running."""
        if run.ended:
            return False
        run.ended = True
        if self._runs.get(run.offer.task_id) is run:
            del self._runs[run.offer.task_id]
        if not run.process.state.is_terminal:
            self._ending.add(run)
        return True

    def _stop_run(self, run: TaskRun, reason: str) -> None:
        if not self._end_run(run):
            return
        task_id = run.offer.task_id
        logger.info("task %s: stopping its client side: %s", task_id, reason)
        self.state.count("stopped")
        self._report(DeviceReport(task_id, "stopped", reason=reason, run=run.offer.run))
        self._spawn(run.process.stop(self._grace), f"stop {task_id}")

    # -- push -------------------------------------------------------------------------

    def _on_push(self, name: str, data: Any) -> None:
        if name == "task" and (offers := pushed_offers(data)) is not None:
            self._pushed = offers  # the newest answer wins; the loop takes it next
        if isinstance(data, dict):
            task_id = data.get("task_id")
            if name == "task" and data.get("running") and isinstance(task_id, str):
                # Started again: a version finished here may run again.
                self.state.forget_finished({task_id})
            if name == "task" and data.get("running") is False and isinstance(task_id, str):
                self.run_ends.record(task_id)  # stopped, finished or failed on the cloud
            if name == "quarantine_cleared":
                # The operator lifted it on the cloud (one task, or all when no task_id).
                cleared = self.state.clear_quarantine(task_id if isinstance(task_id, str) else None)
                if cleared:
                    logger.info("quarantine lifted by the operator (%s)", task_id or "all tasks")
        self._wake.set()

    # -- start and end of the agent ------------------------------------------------

    def _recover(self) -> None:
        """End task processes a killed predecessor left, drop stale temporary files."""
        recover_leftovers(self.state, self.sandbox)
        if self.sandbox is not None:  # runs whose record was lost: this agent is alone here
            self.sandbox.containment.reap_all()
        for entry in self.state.expire_quarantine():
            logger.info("task %s: quarantine ended while the agent was away", entry.task_id)
        if self.state.quarantine:
            logger.info("tasks in quarantine: %s", ", ".join(sorted(self.state.quarantine)))
        self.cache.clean_temporary()

    async def _stop_everything(self) -> None:
        failovers = list(self._failovers)
        for task in failovers:
            task.cancel()
        await asyncio.gather(*failovers, return_exceptions=True)
        for run in list(self._runs.values()):
            self._stop_run(run, "the agent is shutting down")
        processes = [run.process for run in self._ending]
        if processes:
            await asyncio.gather(*(p.stop(self._grace) for p in processes), return_exceptions=True)
        background = list(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        for record in list(self.state.running.values()):
            self.state.forget_running(record.task_id)
        self._sync_state()  # a quarantine of a failover cancelled before it ran

    # -- helpers ------------------------------------------------------------------------

    def _spawn(self, coroutine: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _user_id(self) -> str:
        if self._reports is not None:
            return self._reports.user_id
        return self._current_device().user_id

    def _report(self, report: DeviceReport) -> None:
        """Queue ``report`` for the cloud and the device's hook (neither blocks)."""
        if self._reports is not None:
            self._reports.put(report)
        if self.hooks is not None and (event := event_of_report(report)) is not None:
            self.hooks.notify(event)

    def _event(self, function: str, event: str, at: float | None = None, **fields: Any) -> None:
        """Send a timing event; ``at``: when it happened, if not now (a failure is
        told once judged, with the time it was seen)."""
        if self._on_event is None:
            return
        user_id = self._reported.user_id if self._reported else None
        when = time.time() if at is None else at
        try:
            self._on_event(function, event, time=when, user_id=user_id, **fields)
        except Exception:
            logger.exception("the event callback failed on %s %s", function, event)
