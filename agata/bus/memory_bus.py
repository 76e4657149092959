"""In-process bus: no broker, everything in one asyncio loop.

Features: competing consumers, concurrent handling up to ``prefetch`` per consumer,
redelivery of unfinished messages when a consumer is cancelled, request timeouts
(each request carries its deadline, :attr:`~agata.bus.bus.Delivery.deadline`; a caller
is failed within :data:`DEADLINE_TICK` after its timeout).
It behaves like the AMQP bus so it doubles as the fake broker in unit tests.

URL format: ``memory://`` (anything after the scheme is ignored).

Options: ``max_message_bytes`` (default 1 MiB), ``max_queue_length`` (default
100,000 messages; beyond it the oldest message of that queue is dropped with a warning).

All state lives on the instance: two ``MemoryBus`` objects never see each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
import uuid
from collections import deque

from agata.bus.bus import DEFAULT_MAX_MESSAGE_BYTES, Bus, Consumer, Delivery, Handler
from agata.errors import AgataError, ErrorCode

logger = logging.getLogger(__name__)

#: Requests' timeouts are checked on ticks of this many seconds: a call whose reply does
#: not come is failed at most this much after its timeout, never before. One timer per
#: tick serves every call that ends in it (a timer per call cost a third of a round trip).
DEADLINE_TICK = 0.05

#: The calls whose timeouts end in one tick: correlation id -> (future, queue, timeout).
_Bucket = dict[str, tuple["asyncio.Future[bytes]", str, float]]


def _expire(bucket: _Bucket) -> None:
    for future, queue, timeout in bucket.values():
        if not future.done():
            future.set_exception(
                AgataError(ErrorCode.TIMEOUT, f"no reply to {queue!r} within {timeout:g} s")
            )


class _Queue:
    """A named queue: pending messages plus the consumers waiting for them."""

    def __init__(self, name: str, max_length: int) -> None:
        self.name = name
        self.max_length = max_length
        self.messages: deque[Delivery] = deque()
        self.consumers: list[_MemoryConsumer] = []
        self._next = itertools.count()

    def put(self, delivery: Delivery, *, front: bool = False) -> None:
        if not self.messages:  # nothing waits before it: straight to a free consumer
            consumer = self._ready()
            if consumer is not None:
                consumer.take(delivery)
                return
        if front:
            self.messages.appendleft(delivery)
        else:
            if len(self.messages) >= self.max_length:
                self.messages.popleft()
                logger.warning("memory queue %s is full; dropped its oldest message", self.name)
            self.messages.append(delivery)
        self.dispatch()

    def _ready(self) -> _MemoryConsumer | None:
        """The next consumer with free capacity, round robin; None when all are busy."""
        consumers = self.consumers
        count = len(consumers)
        if count == 1:
            return consumers[0] if consumers[0].has_capacity() else None
        start = next(self._next)
        for step in range(count):
            consumer = consumers[(start + step) % count]
            if consumer.has_capacity():
                return consumer
        return None

    def dispatch(self) -> None:
        """Hand pending messages to consumers with free capacity."""
        while self.messages:
            consumer = self._ready()
            if consumer is None:
                return
            consumer.take(self.messages.popleft())


class _MemoryConsumer(Consumer):
    """Handles up to ``prefetch`` messages at once, each in a worker task. A worker
    that finished its message parks until the next one instead of ending, so a
    message costs a future, not a new task (their count never exceeds ``prefetch``)."""

    def __init__(self, bus: MemoryBus, queue: _Queue, handler: Handler, prefetch: int) -> None:
        self._bus = bus
        self._queue = queue
        self._handler = handler
        self._prefetch = max(1, prefetch)
        self._in_flight: dict[asyncio.Task[None], Delivery] = {}
        self._idle: list[tuple[asyncio.Task[None], asyncio.Future[Delivery]]] = []
        self._cancelled = False

    def has_capacity(self) -> bool:
        return not self._cancelled and len(self._in_flight) < self._prefetch

    def take(self, delivery: Delivery) -> None:
        while self._idle:
            task, waiter = self._idle.pop()
            if not waiter.done():  # done: its worker was cancelled while parked
                self._in_flight[task] = delivery
                waiter.set_result(delivery)
                return
        task = asyncio.get_running_loop().create_task(self._work(delivery))
        self._in_flight[task] = delivery

    async def _work(self, delivery: Delivery) -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                reply = await self._handler(delivery)
            except asyncio.CancelledError:
                self._in_flight.pop(task, None)
                raise
            except Exception:
                logger.exception("handler of queue %s failed; message dropped", self._queue.name)
                reply = None
            self._in_flight.pop(task, None)
            if reply is not None and delivery.reply_to:
                self._bus._deliver_reply(delivery.reply_to, delivery.correlation_id, reply)
            if self._cancelled:
                return
            waiter: asyncio.Future[Delivery] = loop.create_future()
            self._idle.append((task, waiter))
            if self._queue.messages:
                self._queue.dispatch()  # may hand this worker the next one at once
            delivery = await waiter

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        if self in self._queue.consumers:
            self._queue.consumers.remove(self)
        unfinished = list(self._in_flight.items())
        self._in_flight.clear()
        idle, self._idle = self._idle, []
        for task, _delivery in unfinished:
            task.cancel()
        for task, _waiter in idle:
            task.cancel()
        for task in [t for t, _ in unfinished] + [t for t, _ in idle]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Hand unfinished messages back, in their original order, like an AMQP requeue.
        for _, delivery in reversed(unfinished):
            self._queue.put(delivery, front=True)


class _Subscription(Consumer):
    def __init__(self, subscribers: list[_Subscription], handler: Handler) -> None:
        self._subscribers = subscribers
        self.handler = handler
        self.backlog = 0
        subscribers.append(self)

    async def cancel(self) -> None:
        if self in self._subscribers:
            self._subscribers.remove(self)


class MemoryBus(Bus):
    """A bus inside one process."""

    def __init__(
        self,
        url: str = "memory://",
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_queue_length: int = 100_000,
    ) -> None:
        self.url = url
        self.max_message_bytes = max_message_bytes
        self._max_queue_length = max_queue_length
        self._queues: dict[str, _Queue] = {}
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._deadlines: dict[int, tuple[_Bucket, asyncio.TimerHandle]] = {}  # by tick
        self._reply_queue = f"amq.gen-memory-{uuid.uuid4().hex}"
        # Fresh per request: a counter under this bus's own (random) reply queue name.
        self._correlation_ids = itertools.count()
        self._topics: dict[str, list[_Subscription]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._connected = False

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        if not self._connected:
            return
        self._connected = False
        for queue in list(self._queues.values()):
            for consumer in list(queue.consumers):
                await consumer.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(AgataError(ErrorCode.UNAVAILABLE, "bus closed"))
        self._pending.clear()
        for _bucket, timer in self._deadlines.values():
            timer.cancel()
        self._deadlines.clear()

    def _check_open(self) -> None:
        if not self._connected:
            raise AgataError(ErrorCode.UNAVAILABLE, "bus unavailable: not connected")

    def _check_size(self, body: bytes) -> None:
        if len(body) > self.max_message_bytes:
            raise AgataError(
                ErrorCode.TOO_LARGE,
                f"message of {len(body)} bytes exceeds the limit of {self.max_message_bytes}",
            )

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(name, self._max_queue_length)
        return queue

    async def request(self, queue: str, body: bytes, *, timeout: float) -> bytes:
        self._check_open()
        self._check_size(body)
        target = self._queues.get(queue)
        if target is None:
            raise AgataError(ErrorCode.UNAVAILABLE, f"no service serves {queue!r}")
        correlation_id = f"{self._reply_queue}.{next(self._correlation_ids)}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self._pending[correlation_id] = future
        bucket = self._deadline_bucket(loop, timeout)
        bucket[correlation_id] = (future, queue, timeout)
        try:
            deadline = time.time() + timeout
            target.put(Delivery(queue, body, self._reply_queue, correlation_id, queue, deadline))
            return await future
        finally:
            bucket.pop(correlation_id, None)
            self._pending.pop(correlation_id, None)

    def _deadline_bucket(self, loop: asyncio.AbstractEventLoop, timeout: float) -> _Bucket:
        """The calls whose timeout ends in the same tick as one of ``timeout`` from now
        (its timer, at the tick's end, fails those still waiting)."""
        tick = math.ceil((loop.time() + timeout) / DEADLINE_TICK)
        found = self._deadlines.get(tick)
        if found is not None:
            return found[0]
        bucket: _Bucket = {}
        timer = loop.call_at(tick * DEADLINE_TICK, self._end_tick, tick)
        self._deadlines[tick] = (bucket, timer)
        return bucket

    def _end_tick(self, tick: int) -> None:
        found = self._deadlines.pop(tick, None)
        if found is not None:
            _expire(found[0])

    def _deliver_reply(self, reply_to: str, correlation_id: str | None, body: bytes) -> None:
        if reply_to != self._reply_queue:
            # A reply for another client: on memory:// that can only be a raw publisher.
            self._queue(reply_to).put(Delivery(reply_to, body, None, correlation_id, None))
            return
        future = self._pending.get(correlation_id or "")
        if future is None or future.done():
            logger.debug("late or unknown reply %s dropped", correlation_id)
            return
        future.set_result(body)

    async def publish(self, queue: str, body: bytes) -> None:
        self._check_open()
        self._check_size(body)
        self._queue(queue).put(Delivery(queue, body))

    async def publish_raw(self, delivery: Delivery) -> None:
        """Publish with explicit properties (tests use it to play a foreign client)."""
        self._check_open()
        if delivery.reply_to == self._reply_queue:
            raise AgataError(ErrorCode.INVALID_ARGUMENT, "reply_to is this bus's own queue")
        self._queue(delivery.queue).put(delivery)

    async def consume(self, queue: str, handler: Handler, *, prefetch: int = 64) -> Consumer:
        self._check_open()
        target = self._queue(queue)
        consumer = _MemoryConsumer(self, target, handler, prefetch)
        target.consumers.append(consumer)
        target.dispatch()
        return consumer

    async def broadcast(self, topic: str, body: bytes) -> None:
        self._check_open()
        self._check_size(body)
        loop = asyncio.get_running_loop()
        for subscription in list(self._topics.get(topic, ())):
            if subscription.backlog >= 10_000:
                logger.warning("subscriber of %s is too slow; message dropped", topic)
                continue
            subscription.backlog += 1
            task = loop.create_task(self._notify(subscription, topic, body))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    @staticmethod
    async def _notify(subscription: _Subscription, topic: str, body: bytes) -> None:
        try:
            await subscription.handler(Delivery(topic, body))
        except Exception:
            logger.exception("subscriber of %s failed", topic)
        finally:
            subscription.backlog -= 1

    async def subscribe(self, topic: str, handler: Handler) -> Consumer:
        self._check_open()
        return _Subscription(self._topics.setdefault(topic, []), handler)
