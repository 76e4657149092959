"""Component events (the experiments' timings): publishing and recording.

Every component publishes ``{"time", "service", "function", "event", ...}`` to the
``events`` queue (the original's format). The :class:`EventRecorder` of the cloud
consumes that queue and stores the events (many in one transaction), so ``agata
experiment`` can read them back in order, and forwards each to the gateways' streams.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from typing import Any, Final

from agata.bus.bus import EVENTS_QUEUE, Bus, Consumer, Delivery
from agata.bus.envelope import encode
from agata.cloud.services.notifier import Notifier
from agata.errors import AgataError, ErrorCode
from agata.protocol.notifications import EventRecorded
from agata.retry import Backoff, StateLog, is_transient
from agata.store.async_store import AsyncStore, as_async
from agata.store.store import Event, NewEvent, Store
from agata.store.validation import MAX_ID

logger = logging.getLogger(__name__)


#: Events held while the bus is unavailable, at most (the oldest go first past this).
MAX_HELD_EVENTS = 10_000
#: Retry delays while holding events: from 0.1 s, doubling, up to 1 s (a retry while the
#: bus is down costs nothing: it fails at once without a connection).
RETRY_BACKOFF: Final = Backoff(0.1, 1.0)
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
            if is_transient(exc):
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
        backoff = RETRY_BACKOFF.fresh()
        try:
            while self._held:
                try:
                    await self._send(self._held[0])
                except AgataError as exc:
                    if not is_transient(exc):  # this one can never go
                        logger.debug("event not published: %s", exc.message)
                        self._held.popleft()
                        continue
                    await asyncio.sleep(backoff.next())
                    continue
                self._held.popleft()
                backoff.reset()
        finally:
            self._flusher = None


#: Deliveries of the ``events`` queue the recorder holds at once (the bus's prefetch), and
#: so the most events one transaction stores.
RECORD_BATCH = 256
#: How long a batch stays open for more events after its first (each event is stored,
#: and its delivery acknowledged, up to this much later).
RECORD_LINGER_SECONDS = 0.05
#: Retry delays of a batch while the store is unavailable (its deliveries stay
#: unacknowledged meanwhile: the broker keeps the rest of the queue).
RECORD_BACKOFF: Final = Backoff(0.1, 2.0)
#: Store errors after which the same batch is written again (any other refuses events).
_RETRY_CODES: Final = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT})


class _NotRecorded(Exception):
    """The recorder stopped before it stored this event (its delivery goes back)."""


class EventRecorder:
    """Consumes the ``events`` queue into the store, in batches.

    Each delivery's handler parses its event and waits while a writer task stores it:
    the writer takes every event that arrived within :data:`RECORD_LINGER_SECONDS` of
    the first (up to :data:`RECORD_BATCH`, the deliveries the bus hands over at once) and
    stores them in one transaction
    (:meth:`~agata.store.store.Store.add_events`). A handler returns — and the bus
    acknowledges its delivery — only once that transaction committed, so a crash loses
    no acknowledged event: the broker hands the others to another consumer (or to this
    one, restarted), at the price of storing an event twice when the crash fell between
    a commit and its acknowledgements. While the store is unavailable the writer tries
    the batch again with backoff and nothing is acknowledged. An event the store refuses
    (a value it cannot keep) is logged and acknowledged; its batch's others are stored
    one by one. Each stored event is then announced (``event`` notification).
    """

    def __init__(self, bus: Bus, store: Store | AsyncStore, notifier: Notifier) -> None:
        self.bus = bus
        self.store = as_async(store)
        self.notifier = notifier
        self.batches = 0  # transactions that stored events (a measure for tests and benches)
        self._consumer: Consumer | None = None
        self._waiting: collections.deque[tuple[NewEvent, asyncio.Future[Event]]] = (
            collections.deque()
        )
        self._wake = asyncio.Event()
        self._batch: list[tuple[NewEvent, asyncio.Future[Event]]] = []  # being stored
        self._writer: asyncio.Task[None] | None = None
        self._store_state = StateLog(logger, "event recorder: store")
        self._store_state.state = "storing"  # said only when it changes

    async def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_batches())
        self._consumer = await self.bus.consume(EVENTS_QUEUE, self._on_event, prefetch=RECORD_BATCH)

    async def stop(self) -> None:
        """Stop consuming (deliveries not yet stored go back to the queue), then the writer."""
        if self._consumer is not None:
            await self._consumer.cancel()
            self._consumer = None
        # Nothing arrives any more; what is being stored or waits is answered below.
        unstored = [*self._batch, *self._waiting]
        self._waiting.clear()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        for _, future in unstored:
            if not future.done():
                future.set_exception(_NotRecorded())

    async def _on_event(self, delivery: Delivery) -> None:
        try:
            new = _new_event(delivery.body)
        except (ValueError, TypeError) as exc:
            logger.warning("event refused (%s): %.200r", exc, delivery.body)
            return None
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiting.append((new, future))
        self._wake.set()
        try:
            event = await future
        except _NotRecorded:
            return None  # not acknowledged in time: the broker hands it out again
        except AgataError as exc:
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

    async def _write_batches(self) -> None:
        backoff = RECORD_BACKOFF.fresh()
        while True:
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                # The first event of a batch waits a little for others: events come in
                # bursts (a report, an enrollment), rarely all in one loop iteration.
                await asyncio.sleep(RECORD_LINGER_SECONDS)
                continue
            batch: list[tuple[NewEvent, asyncio.Future[Event]]] = []
            while self._waiting and len(batch) < RECORD_BATCH:
                item = self._waiting.popleft()
                if not item[1].done():  # done: its handler was cancelled (delivery handed back)
                    batch.append(item)
            if not batch:
                continue
            self._batch = batch
            try:
                stored = await self.store.add_events([new for new, _ in batch])
            except AgataError as exc:
                if exc.code in _RETRY_CODES:
                    self._waiting.extendleft(reversed(batch))  # first again, in order
                    self._store_state.set(
                        "unavailable, retrying", exc.message, level=logging.WARNING
                    )
                    await asyncio.sleep(backoff.next())
                    continue
                await self._write_one_by_one(batch)
                continue
            except Exception:  # a bug: refuse the batch rather than stop recording
                logger.exception("event recorder: a batch of %d events failed", len(batch))
                failed = AgataError(ErrorCode.INTERNAL, "the event could not be stored")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failed)
                continue
            finally:
                self._batch = []
            self.batches += 1
            backoff.reset()
            self._store_state.set("storing")
            for (_, future), event in zip(batch, stored, strict=True):
                if not future.done():
                    future.set_result(event)

    async def _write_one_by_one(self, batch: list[tuple[NewEvent, asyncio.Future[Event]]]) -> None:
        """A batch the store refused: each event alone, so only the bad ones are refused."""
        for index, (new, future) in enumerate(batch):
            try:
                (event,) = await self.store.add_events([new])
            except AgataError as exc:
                if exc.code in _RETRY_CODES:  # the rest waits for the store to be back
                    self._waiting.extendleft(reversed(batch[index:]))
                    return
                if not future.done():
                    future.set_exception(exc)
                continue
            self.batches += 1
            if not future.done():
                future.set_result(event)


def _new_event(body: bytes) -> NewEvent:
    """The event a delivery of the ``events`` queue holds (the original's format: the
    fields of :class:`~agata.store.store.Event`, the others kept as its data)."""
    raw = json.loads(body)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    known = {"time", "service", "function", "event", "task_id", "user_id", "run"}
    run = raw.get("run")  # the task's run it belongs to (absent: its current one)
    if not (isinstance(run, int) and not isinstance(run, bool) and 1 <= run < 2**31):
        run = None
    return NewEvent(
        time=float(raw.get("time") or time.time()),
        service=str(raw.get("service", ""))[:200],
        function=str(raw.get("function", ""))[:200],
        event=_cut(str(raw.get("event", "")), MAX_ID),
        task_id=_optional_str(raw.get("task_id")),
        user_id=_optional_str(raw.get("user_id")),
        data={k: v for k, v in raw.items() if k not in known},
        run=run,
    )


def _cut(text: str, limit: int) -> str:
    """``text`` within the store's ``limit`` (an event naming a long reason, such as a
    traceback's last line, is kept with its end cut, not refused)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)[:128]
