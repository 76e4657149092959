"""Recording the end of a task's server side until the store takes it.

When a server side ends (Finished, an error, a crash, a stop) its task must stop being
"running" in the store: while it is, devices are offered the task and ``start`` answers
409. A store that refuses the write for a while (a full disk, a locked or unreachable
database) must not make that permanent, so an end is kept here and written again with
backoff until the store takes it. The store is awaited (:class:`AsyncStore`, whose calls
run in worker threads): a database waiting on its lock does not stop the cloud's event
loop meanwhile.

The same loop is the running cloud's reconcile: every ``reconcile_seconds`` it asks its
owner for tasks it claimed whose process is gone (``lost``) and records their end too.
Only the replica that claimed a task (won its start, or took over its leftovers when it
started) decides that its process is gone; a task another replica runs is never ended
here.

An end is written only over the run it belongs to: if the task is no longer running (an
operator stopped it, it was deleted) or runs again as a newer run (another run number or
process group, possibly on another replica), the end is dropped instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, KeysView
from dataclasses import dataclass
from typing import Final

from agata.errors import AgataError, ErrorCode
from agata.retry import Backoff
from agata.store.async_store import AsyncStore, as_async
from agata.store.store import Store, TaskState

logger = logging.getLogger(__name__)

#: The first retry of an end the store refused comes after 0.25 s, then each waits twice
#: as long as the one before, up to 8 s.
END_RETRY_BACKOFF: Final = Backoff(0.25, 8.0)
#: How often the running cloud looks for claimed tasks whose process is gone.
RECONCILE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class TaskEnd:
    """How a run's server side ended; ``pgid`` is its process group and ``run`` its
    number (None: unknown, the task's current run)."""

    task_id: str
    state: TaskState
    reason: str
    pgid: int | None = None
    run: int | None = None


#: Called once an end is settled: ``written`` is False when it was dropped (see module).
Settled = Callable[[TaskEnd, bool], Awaitable[None]]


class EndRecorder:
    """Ends not yet in the store, and the loop that writes them (see module docstring)."""

    def __init__(
        self,
        store: Store | AsyncStore,
        on_settled: Settled,
        lost: Callable[[], Iterable[TaskEnd]],
        *,
        reconcile_seconds: float = RECONCILE_SECONDS,
    ) -> None:
        self.store = as_async(store)
        self.on_settled = on_settled
        self.lost = lost
        self.reconcile_seconds = reconcile_seconds
        self._pending: dict[str, TaskEnd] = {}
        self._attempts: dict[str, int] = {}
        self._busy = asyncio.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._closing = False

    def pending(self, task_id: str) -> TaskEnd | None:
        """The end of ``task_id`` that the store has not taken yet, if any."""
        return self._pending.get(task_id)

    def pending_ids(self) -> KeysView[str]:
        """The tasks whose end the store has not taken yet (a live view)."""
        return self._pending.keys()

    async def record(self, end: TaskEnd) -> bool:
        """Write ``end`` now; if the store refuses, keep it and retry. True if settled."""
        self._pending[end.task_id] = end
        settled = await self._write_pending()
        if not settled:
            self._wake.set()  # the loop backs off from now on
        return end.task_id not in self._pending

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._keep_recording())

    async def stop(self) -> None:
        """End the loop; ends still refused are reconciled when the cloud next starts."""
        self._closing = True
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        for end in self._pending.values():
            logger.error(
                "the end of task %s (%s: %s) was never recorded; the next start of the "
                "cloud marks it ended",
                end.task_id,
                end.state,
                end.reason,
            )

    async def _keep_recording(self) -> None:
        backoff = END_RETRY_BACKOFF.fresh()
        delay = backoff.next()
        while not self._closing:
            await self._sleep(delay if self._pending else self.reconcile_seconds)
            self._wake.clear()
            if self._closing:
                return
            try:
                for end in self.lost():
                    if end.task_id not in self._pending:
                        logger.warning("task %s: %s", end.task_id, end.reason)
                        self._pending[end.task_id] = end
                settled = await self._write_pending()
            except Exception:  # the loop must outlive any one failure
                logger.exception("recording the ends of tasks failed; trying again")
                settled = False
            if settled:
                backoff.reset()
            delay = backoff.next()

    async def _sleep(self, seconds: float) -> None:
        """Until ``seconds`` pass or ``_wake`` is set. Not ``asyncio.wait_for``: on
        Python 3.11 it can swallow a cancellation that meets the event being set."""
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({waiter}, timeout=seconds)
        finally:
            waiter.cancel()

    async def _write_pending(self) -> bool:
        """One attempt at every pending end; True when none is left."""
        async with self._busy:
            for task_id, end in list(self._pending.items()):
                try:
                    written = await self._write(end)
                except AgataError as exc:
                    self._refused(end, exc.message)
                    continue
                except Exception as exc:  # a bug or a driver's surprise: keep the end
                    logger.exception("recording the end of task %s failed", task_id)
                    self._refused(end, type(exc).__name__)
                    continue
                del self._pending[task_id]
                attempts = self._attempts.pop(task_id, 0)
                if attempts:
                    logger.warning(
                        "recorded the end of task %s after %d refused attempt(s)",
                        task_id,
                        attempts,
                    )
                await self.on_settled(end, written)
            return not self._pending

    async def _write(self, end: TaskEnd) -> bool:
        """False: nothing to write (see module docstring)."""
        try:
            task = await self.store.get_task(end.task_id)
            if not task.running:
                return False
            if end.pgid is not None and task.server_pid not in (None, end.pgid):
                return False  # a newer run, not this one
            if end.run is not None and task.run != end.run:
                return False
            await self.store.set_task_state(
                end.task_id,
                running=False,
                state=end.state,
                reason=end.reason,
                expected_running=True,
            )
        except AgataError as exc:
            if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.CONFLICT):
                return False  # deleted, or stopped meanwhile
            raise
        return True

    def _refused(self, end: TaskEnd, why: str) -> None:
        attempts = self._attempts[end.task_id] = self._attempts.get(end.task_id, 0) + 1
        if attempts == 1:
            logger.error(
                "cannot record the end of task %s yet (%s); retrying until the store takes it",
                end.task_id,
                why,
            )
        else:
            logger.debug("end of task %s refused again (%d): %s", end.task_id, attempts, why)
