"""Reports from the device to the cloud (``rpc_exec_report_device_task``), sent in order
in the background.

The agent must never wait for the cloud to go on supervising its tasks: it queues a
report and returns. One sender task delivers them in order, retrying with backoff while
the cloud is unreachable. The queue is bounded: when the cloud is away for long, the
oldest reports are dropped (a warning once per outage), never the agent's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from agata.edge.cloud_client import CloudClient
from agata.errors import AgataError
from agata.retry import Backoff, is_transient

__all__ = ["DeviceReport", "ReportSender"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceReport:
    task_id: str
    status: str
    reason: str = ""
    round: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    #: A failed client side's last output lines (:func:`agata.edge.run_ends.bounded_output`).
    log_lines: tuple[dict[str, str], ...] = ()
    #: When a ``quarantined`` report's quarantine ends (epoch seconds).
    quarantined_until: float | None = None
    #: The run of the task the report is about (its offer's ``run``; None from a cloud
    #: without runs): a report that arrives after the next run began stays in its own.
    run: int | None = None


class ReportSender:
    """Queues reports of one device and sends them one by one."""

    def __init__(
        self,
        client: CloudClient,
        user_id: str,
        *,
        limit: int = 1000,
        backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self.user_id = user_id
        self._queue: asyncio.Queue[DeviceReport] = asyncio.Queue(maxsize=limit)
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._dropping = False
        self.sent = 0

    def put(self, report: DeviceReport) -> None:
        """Queue a report; never blocks (drops the oldest when full)."""
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
            if not self._dropping:
                logger.warning("the cloud is not taking reports; dropping the oldest ones")
                self._dropping = True
        self._queue.put_nowait(report)

    def pending(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        """Send reports until cancelled."""
        while True:
            report = await self._queue.get()
            await self._deliver(report)

    async def flush(self, timeout: float) -> None:
        """Send what is queued, for at most ``timeout`` seconds, giving up at once when
        the cloud is unreachable (best effort, for a clean shutdown)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self._queue.empty():
                    if not await self._deliver(self._queue.get_nowait(), retry=False):
                        return

    async def _deliver(self, report: DeviceReport, *, retry: bool = True) -> bool:
        """Send one report; False when the cloud was unreachable and ``retry`` is off."""
        while True:
            try:
                await self.client.report_device_task(
                    self.user_id,
                    report.task_id,
                    report.status,
                    reason=report.reason,
                    round=report.round,
                    metrics=report.metrics or None,
                    log_lines=list(report.log_lines) or None,
                    quarantined_until=report.quarantined_until,
                    run=report.run,
                )
            except AgataError as exc:
                if is_transient(exc):
                    if not retry:
                        return False
                    await asyncio.sleep(self._backoff.after(exc.retry_after))
                    continue
                logger.warning(
                    "the cloud refused the report %s of task %s: %s",
                    report.status,
                    report.task_id,
                    exc.message,
                )
                return True
            self._backoff.reset()
            self._dropping = False
            self.sent += 1
            return True
