"""Which tasks a device may report on: the device scope of ``rpc_exec_report_device_task``.

A device reports on the tasks it takes part in, and nothing else. A report of device
``D`` on task ``T`` is **in scope** when ``T`` exists and either

(a) ``T`` is running and ``D`` meets its selection criteria: exactly the tasks the
    cloud offers ``D`` in answer to ``rpc_exec_client_requesting_task`` during the
    task's current run; or
(b) the report ends ``D``'s part (``finished``, ``failed``, ``quarantined``,
    ``stopped``) and ``D``'s last recorded status for ``T`` says it was taking part
    (``downloading``, ``running``, or ``failed`` before its ``quarantined``): the task
    stopped, or stopped matching ``D``, while ``D`` ran it, and ``D`` says how its part
    ended (with the last round's metrics).

Anything else is answered exactly like a task that does not exist: ``NOT_FOUND`` with
the message of :func:`out_of_scope`, so a device learns nothing about tasks it is not
offered (not even that they exist). The metrics of a report are recorded only when it
is in scope, under the device's id (which may not be one of the cloud's own source
names: :data:`agata.protocol.operations.RESERVED_DEVICE_IDS`).

Cost: a running task's criteria and a device's attributes are kept for one poll
interval (:attr:`ReportScope.cache_seconds`) or until a notification says the task or
the device changed (:meth:`ReportScope.forget_task`, :meth:`ReportScope.forget_device`), so a
report in case (a) usually reads nothing: the store is read once per running task and
once per device in that time. Kept records only ever shorten a "yes": a report they do
not show in scope is decided on fresh records, so a task just started or a device that
just came to match is never refused for a stale copy. The task manager's poll path is
not touched.
"""

from __future__ import annotations

import time
from typing import Any, Final

from agata.cloud.criteria.criteria_language import CriteriaCache
from agata.cloud.services.views import device_attributes
from agata.errors import AgataError, ErrorCode
from agata.store.async_store import AsyncStore
from agata.store.store import DeviceTaskStatus

#: Seconds a running task's criteria and a device's attributes are reused unless told
#: otherwise (notifications end it at once; this bounds it when one is lost, as the task
#: manager's caches do). The device registry gives one poll interval (``request_interval``).
SCOPE_CACHE_SECONDS: Final = 10.0
#: Devices whose attributes are kept at most (all are dropped past this).
SCOPE_CACHE_SIZE: Final = 100_000
#: Statuses that end a device's part in a task.
ENDING_STATUSES: Final = frozenset(
    {
        DeviceTaskStatus.FINISHED.value,
        DeviceTaskStatus.FAILED.value,
        DeviceTaskStatus.QUARANTINED.value,
        DeviceTaskStatus.STOPPED.value,
    }
)
#: Recorded statuses of a device that was taking part in a task.
TAKING_PART: Final = frozenset(
    {
        DeviceTaskStatus.DOWNLOADING.value,
        DeviceTaskStatus.RUNNING.value,
        DeviceTaskStatus.FAILED.value,
    }
)


def out_of_scope(task_id: str) -> AgataError:
    """The answer to a report on a task that is unknown or not the device's: the same
    for both, so existence does not leak."""
    return AgataError(ErrorCode.NOT_FOUND, f"task {task_id!r} not found")


class ReportScope:
    """Decides whether a device's report on a task is in scope (module docstring)."""

    def __init__(
        self,
        store: AsyncStore,
        criteria: CriteriaCache | None = None,
        *,
        cache_seconds: float = SCOPE_CACHE_SECONDS,
    ) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.criteria = criteria or CriteriaCache()
        # Both only ever shorten a "yes": a "no" is always decided on fresh records.
        self._running: dict[str, tuple[float, str]] = {}  # task -> (until, criteria)
        self._devices: dict[str, tuple[float, dict[str, Any]]] = {}  # -> (until, attributes)

    async def check(self, user_id: str, task_id: str, status: str) -> None:
        """Return if the report is in scope; raise NOT_FOUND (:func:`out_of_scope`, or
        "device … not found" for an unknown device) otherwise."""
        now = time.monotonic()
        task = self._running.get(task_id)
        device = self._devices.get(user_id)
        if task is not None and device is not None and task[0] > now and device[0] > now:
            if self.criteria.matches(task[1], device[1]):
                return
        # Not known to be in scope: decide on what the store holds now.
        try:
            record = await self.store.get_task(task_id)
        except AgataError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                self._running.pop(task_id, None)
                raise out_of_scope(task_id) from None
            raise
        attributes = device_attributes(await self.store.get_device(user_id))  # 404 names it
        if len(self._devices) >= SCOPE_CACHE_SIZE:
            self._devices.clear()
        self._devices[user_id] = (now + self.cache_seconds, attributes)
        if record.running:
            self._running[task_id] = (now + self.cache_seconds, record.selection_criteria)
            if self.criteria.matches(record.selection_criteria, attributes):
                return
        else:
            self._running.pop(task_id, None)
        if status in ENDING_STATUSES:
            for state in await self.store.list_device_tasks(user_id):
                if state.task_id == task_id and state.status.value in TAKING_PART:
                    return
        raise out_of_scope(task_id)

    def forget_task(self, task_id: str) -> None:
        """The task changed (started, stopped, updated, deleted): read it afresh."""
        self._running.pop(task_id, None)

    def forget_device(self, user_id: str) -> None:
        """The device's record changed: read it afresh."""
        self._devices.pop(user_id, None)
