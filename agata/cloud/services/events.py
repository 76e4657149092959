"""Component events (the experiments' timings): publishing and recording.

Every component publishes ``{"time", "service", "function", "event", ...}`` to the
``events`` queue (the original's format). The :class:`EventRecorder` of the cloud
consumes that queue and stores each event, so ``agata experiment`` can read them back
in order, and forwards it to the gateways' streams.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from typing import Any

from agata.bus.bus import EVENTS_QUEUE, Bus, Consumer, Delivery
from agata.bus.envelope import encode
from agata.cloud.services.notifier import Notifier
from agata.errors import AgataError, ErrorCode
from agata.protocol.notifications import EventRecorded
from agata.store.store import Store

logger = logging.getLogger(__name__)


#: Events held while the bus is unavailable, at most (the oldest go first past this).
MAX_HELD_EVENTS = 10_000
#: Retry delays while holding events: from the first to the last, doubling (a retry
#: while the bus is down costs nothing: it fails at once without a connection).
RETRY_FIRST_SECONDS = 0.1
RETRY_LAST_SECONDS = 1.0
#: A publish that has not completed by then counts as failed (a publish caught by a
#: dropped connection may never complete).
PUBLISH_TIMEOUT_SECONDS = 5.0


class EventPublisher:
    """Fire-and-forget events from synchronous code paths; never raises.

    While the bus is unavailable (a broker outage) events are held in memory, in order,
    up to :data:`MAX_HELD_EVENTS`, and published once it is back: an experiment's
    timeline keeps the events of an outage, with the times they happened.
    """

    def __init__(self, bus: Bus, service: str, *, enabled: bool = True) -> None:
        self.bus = bus
        self.service = service
        self.enabled = enabled
        self.dropped = 0  # events lost because more than MAX_HELD_EVENTS were held
        self._pending: set[asyncio.Task[None]] = set()
        self._held: collections.deque[bytes] = collections.deque()
        self._flusher: asyncio.Task[None] | None = None

    @property
    def held(self) -> int:
        return len(self._held)

    def __call__(self, function: str, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        body = encode(
            {
                "time": time.time(),
                "service": self.service,
                "function": function,
                "event": event,
                **fields,
            }
        )
        if self._flusher is not None:  # behind the held ones, in order
            self._hold(body)
            return
        task = asyncio.get_running_loop().create_task(self._publish(body))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        """Stop retrying; events still held are dropped (and counted in the log)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._held:
            logger.warning(
                "%s: %d event(s) not published (the bus was unavailable)",
                self.service,
                len(self._held),
            )
            self._held.clear()

    async def _send(self, body: bytes) -> None:
        try:
            await asyncio.wait_for(self.bus.publish(EVENTS_QUEUE, body), PUBLISH_TIMEOUT_SECONDS)
        except TimeoutError:
            raise AgataError(ErrorCode.UNAVAILABLE, "bus unavailable: publish timed out") from None

    async def _publish(self, body: bytes) -> None:
        try:
            await self._send(body)
        except AgataError as exc:
            if exc.code is ErrorCode.UNAVAILABLE:
                self._hold(body)
            else:
                logger.debug("event not published: %s", exc.message)

    def _hold(self, body: bytes) -> None:
        if len(self._held) >= MAX_HELD_EVENTS:
            self._held.popleft()
            self.dropped += 1
            if self.dropped == 1:
                logger.warning(
                    "%s: more than %d events held while the bus is unavailable; "
                    "dropping the oldest",
                    self.service,
                    MAX_HELD_EVENTS,
                )
        self._held.append(body)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        delay = RETRY_FIRST_SECONDS
        try:
            while self._held:
                try:
                    await self._send(self._held[0])
                except AgataError as exc:
                    if exc.code is not ErrorCode.UNAVAILABLE:  # this one can never go
                        logger.debug("event not published: %s", exc.message)
                        self._held.popleft()
                        continue
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_LAST_SECONDS)
                    continue
                self._held.popleft()
                delay = RETRY_FIRST_SECONDS
        finally:
            self._flusher = None


class EventRecorder:
    """Consumes the ``events`` queue into the store."""

    def __init__(self, bus: Bus, store: Store, notifier: Notifier) -> None:
        self.bus = bus
        self.store = store
        self.notifier = notifier
        self._consumer: Consumer | None = None

    async def start(self) -> None:
        self._consumer = await self.bus.consume(EVENTS_QUEUE, self._on_event, prefetch=256)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.cancel()
            self._consumer = None

    async def _on_event(self, delivery: Delivery) -> None:
        try:
            raw = json.loads(delivery.body)
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            known = {"time", "service", "function", "event", "task_id", "user_id", "run"}
            run = raw.get("run")  # the task's run it belongs to (absent: its current one)
            if not (isinstance(run, int) and not isinstance(run, bool) and 1 <= run < 2**31):
                run = None
            event = self.store.add_event(
                time=float(raw.get("time") or time.time()),
                service=str(raw.get("service", ""))[:200],
                function=str(raw.get("function", ""))[:200],
                event=str(raw.get("event", ""))[:2000],
                task_id=_optional_str(raw.get("task_id")),
                user_id=_optional_str(raw.get("user_id")),
                data={k: v for k, v in raw.items() if k not in known},
                run=run,
            )
        except (ValueError, TypeError, AgataError) as exc:
            logger.warning("event refused (%s): %.200r", exc, delivery.body)
            return None
        await self.notifier.notify(
            EventRecorded(
                time=event.time,
                service=event.service,
                function=event.function,
                event=event.event,
                task_id=event.task_id,
                user_id=event.user_id,
                run=event.run,
            )
        )
        return None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)[:128]
