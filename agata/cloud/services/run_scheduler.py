"""When runs start: the cap of running runs, its queue, and waiting for devices.

- **Cap.** With ``max_running`` set, a start while that many runs are ``waiting`` or
  ``running`` (on any replica: counted in the store) makes a ``queued`` run. Whenever a
  run ends here, :meth:`RunScheduler.dequeue` starts queued runs, oldest start first,
  while there is room; the store's ``start_queued_run`` is the claim, so of two replicas
  dequeuing at once only one starts a given run. (Two replicas may both see room for one
  more run and start one each: the cap is kept per decision, not as a global lock.)
- **Waiting.** A run of a task with ``min_devices`` starts ``waiting``: its server side
  runs and devices are offered it. A watcher reads the run every
  :data:`WAIT_POLL_SECONDS` (so joins on any replica count) and moves it to ``running``
  once that many devices joined; past ``start_deadline_s`` it fails the run with "only N
  of M devices joined within S s" through ``fail``. Without a deadline it waits until the
  run ends otherwise (stopped, its server side ended).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from agata.errors import AgataError, ErrorCode
from agata.store.run_store import Run, RunState
from agata.store.store import Store, Task

logger = logging.getLogger(__name__)

#: How often a waiting run's joined devices are read.
WAIT_POLL_SECONDS = 0.25

#: Starts the server side of a run the scheduler took out of the queue.
Launch = Callable[[Task, Run], Awaitable[None]]
#: Ends a waiting run as failed with the reason (task id, run, reason).
Fail = Callable[[str, int, str], Awaitable[None]]
#: Told when a waiting run became running (task id, run).
Joined = Callable[[str, int], Awaitable[None]]


class RunScheduler:
    """The cap, the queue and the waiting runs of one replica (module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        max_running: int | None,
        launch: Launch,
        fail: Fail,
        joined: Joined,
    ) -> None:
        self.store = store
        self.max_running = max_running
        self.launch = launch
        self.fail = fail
        self.joined = joined
        self._watchers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._dequeuing = asyncio.Lock()

    def first_state(self, task: Task) -> tuple[RunState, str]:
        """The state a new run of ``task`` starts in, and why it waits if it does."""
        if self.max_running is not None:
            started = self.store.count_started_runs()
            if started >= self.max_running:
                return RunState.QUEUED, (
                    f"queued: {started} runs are running, the cloud runs at most "
                    f"{self.max_running} (--max-running-tasks)"
                )
        return self.started_state(task), ""

    @staticmethod
    def started_state(task: Task) -> RunState:
        return RunState.WAITING if task.min_devices > 0 else RunState.RUNNING

    def watch(self, run: Run) -> None:
        """Follow a ``waiting`` run until enough devices joined or its deadline passed."""
        key = (run.task_id, run.run)
        if run.state is not RunState.WAITING or key in self._watchers:
            return
        watcher = asyncio.create_task(self._wait_for_devices(run))
        self._watchers[key] = watcher
        watcher.add_done_callback(lambda _t: self._watchers.pop(key, None))

    async def _wait_for_devices(self, run: Run) -> None:
        started = time.monotonic()
        deadline = run.start_deadline_s
        while True:
            try:
                current = self.store.get_run(run.task_id, run.run)
            except AgataError as exc:
                if exc.code is ErrorCode.NOT_FOUND:
                    return  # deleted
                logger.warning("task %s run %d: %s", run.task_id, run.run, exc.message)
                current = None
            if current is not None:
                if current.state is not RunState.WAITING:
                    return  # stopped, ended, or moved on by another replica
                if current.devices_joined >= run.min_devices:
                    await self._to_running(run)
                    return
                if deadline is not None and time.monotonic() - started >= deadline:
                    reason = (
                        f"only {current.devices_joined} of {run.min_devices} devices joined "
                        f"within {deadline:g} s"
                    )
                    await self.fail(run.task_id, run.run, reason)
                    return
            await asyncio.sleep(WAIT_POLL_SECONDS)

    async def _to_running(self, run: Run) -> None:
        try:
            self.store.set_run_waiting_done(run.task_id, run.run)
        except AgataError as exc:
            if exc.code not in (ErrorCode.CONFLICT, ErrorCode.NOT_FOUND):
                raise
            return  # it ended meanwhile
        await self.joined(run.task_id, run.run)

    async def dequeue(self) -> None:
        """Start queued runs, oldest first, while the cap leaves room."""
        if self.max_running is None:
            return
        async with self._dequeuing:
            for queued in self.store.list_queued_runs():
                if self.store.count_started_runs() >= self.max_running:
                    return
                try:
                    task = self.store.get_task(queued.task_id)
                    run = self.store.start_queued_run(
                        queued.task_id, queued.run, state=self.started_state(task)
                    )
                except AgataError as exc:
                    if exc.code in (ErrorCode.CONFLICT, ErrorCode.NOT_FOUND):
                        continue  # stopped, deleted or started elsewhere meanwhile
                    logger.warning("queued run of task %s: %s", queued.task_id, exc.message)
                    return
                logger.info("task %s run %d leaves the queue", run.task_id, run.run)
                await self.launch(task, run)

    async def stop(self) -> None:
        watchers = list(self._watchers.values())
        for watcher in watchers:
            watcher.cancel()
        for watcher in watchers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
