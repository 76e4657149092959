"""RabbitMQ bus through aio-pika, compatible with the original system's wire format.

Features:
- one long-lived connection per bus (the original opened one per call);
- one queue per operation on the default exchange, declared like the original
  (non-durable, non-exclusive, not auto-deleted), so its services and clients mix
  with ours;
- replies on an exclusive, server-named reply queue; ``correlation_id`` is a UUID;
- a request carries the caller's deadline twice, outside the body (which stays the
  original's): ``expiration`` (the timeout in ms: the broker drops a request still
  queued when its caller has given up) and the header ``x-agata-deadline-ms`` (epoch
  milliseconds: a consumer skips a request it took too late; the cloud's machines' clocks
  must agree, e.g. by NTP, to well within the RPC timeout). Messages without them, from
  the original system's clients, are served as before;
- a request to a queue that does not exist fails at once with ``UNAVAILABLE``
  instead of hanging until the timeout (the first request to each queue checks it
  with a passive declare on a throwaway channel; known queues are remembered);
- reconnects by itself when the broker goes away: the first connection is retried
  with exponential backoff, later ones by aio-pika's robust connection which also
  restores queues and consumers. Requests in flight when the link drops fail at once
  with ``UNAVAILABLE`` ("bus unavailable"); messages a consumer had not acknowledged
  are redelivered by the broker to another consumer.

URL format: ``amqp://user:password@host:port/vhost`` (``amqps://`` for TLS).

Options: ``max_message_bytes`` (1 MiB), ``reconnect_interval`` (seconds between
reconnection attempts after a drop, default 1), ``connect_timeout`` (give up the
first connection after this many seconds; None = keep trying).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, Final

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from agata.bus.bus import DEFAULT_MAX_MESSAGE_BYTES, Bus, Consumer, Delivery, Handler
from agata.errors import AgataError, ErrorCode
from agata.retry import Backoff, StateLog

logger = logging.getLogger(__name__)

#: Delays between attempts of the first connection (later ones: aio-pika's robust
#: connection, every ``reconnect_interval``).
CONNECT_BACKOFF: Final = Backoff(0.2, 5.0)
#: Errors after which a new connection attempt makes sense.
RECOVERABLE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    aio_pika.exceptions.AMQPConnectionError,
)


#: Header of a request carrying the caller's deadline: epoch milliseconds, an integer
#: (AMQP tables may carry floats as 32 bits: far too coarse for a time).
DEADLINE_HEADER = "x-agata-deadline-ms"


def _deadline(headers: Any) -> float | None:
    """The caller's deadline (epoch seconds) from a request's headers; None when absent
    or not an integer (a client of the original system sends none)."""
    value = headers.get(DEADLINE_HEADER) if isinstance(headers, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value / 1000


def _unavailable(reason: str) -> AgataError:
    return AgataError(ErrorCode.UNAVAILABLE, f"bus unavailable: {reason}")


class _AmqpConsumer(Consumer):
    def __init__(self, channel: AbstractChannel, queue: AbstractQueue, tag: str) -> None:
        self._channel = channel
        self._queue = queue
        self._tag = tag

    async def cancel(self) -> None:
        # Closing the channel (rather than basic.cancel) makes the broker requeue the
        # messages we took but did not acknowledge, for the other consumers.
        with contextlib.suppress(Exception):
            await self._channel.close()


class AmqpBus(Bus):
    """A bus on a RabbitMQ broker."""

    def __init__(
        self,
        url: str,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        reconnect_interval: float = 1.0,
        connect_timeout: float | None = None,
    ) -> None:
        self.url = url
        self.max_message_bytes = max_message_bytes
        self.reconnect_interval = reconnect_interval
        self.connect_timeout = connect_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._reply_queue: AbstractQueue | None = None
        self._pending: dict[str, tuple[asyncio.Future[bytes], str]] = {}
        self._known_queues: set[str] = set()
        self._exchanges: dict[str, Any] = {}
        self._consumer_channels: list[AbstractChannel] = []
        self._lock = asyncio.Lock()
        self._online = False

    # -- connection -------------------------------------------------------------

    async def connect(self) -> None:
        async with self._lock:
            if self._connection is not None:
                return
            backoff = CONNECT_BACKOFF.fresh()
            loop = asyncio.get_running_loop()
            deadline = None if self.connect_timeout is None else loop.time() + self.connect_timeout
            broker = StateLog(logger, "broker")
            while True:
                try:
                    connection = await aio_pika.connect_robust(
                        self.url, reconnect_interval=self.reconnect_interval, timeout=5
                    )
                    break
                except RECOVERABLE_ERRORS as exc:
                    delay = backoff.next()
                    if deadline is not None and loop.time() + delay > deadline:
                        raise _unavailable(f"cannot connect to the broker: {exc}") from None
                    broker.set(
                        "not reachable, retrying with backoff", str(exc), level=logging.WARNING
                    )
                    await asyncio.sleep(delay)
            self._connection = connection
            connection.close_callbacks.add(self._on_connection_lost)
            connection.reconnect_callbacks.add(self._on_reconnected)
            channel = await connection.channel(publisher_confirms=False)
            self._reply_queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
            await self._reply_queue.consume(self._on_reply, no_ack=True)
            self._channel = channel
            self._online = True
            logger.info("connected to the broker")

    def _on_connection_lost(self, _sender: Any, exc: BaseException | None) -> None:
        if self._online:
            logger.warning("lost the broker connection (%s); reconnecting", exc)
        self._online = False
        self._fail_pending(_unavailable("connection to the broker lost"))

    def _on_reconnected(self, _sender: Any) -> None:
        self._online = True
        logger.info("reconnected to the broker")

    def _fail_pending(self, error: AgataError) -> None:
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        self._online = False
        self._fail_pending(_unavailable("bus closed"))
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    # -- client side ------------------------------------------------------------

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        entry = self._pending.get(message.correlation_id or "")
        if entry is None or entry[0].done():
            logger.debug("late or unknown reply %s dropped", message.correlation_id)
            return
        entry[0].set_result(message.body)

    async def _check_queue_exists(self, queue: str) -> None:
        if queue in self._known_queues:
            return
        assert self._connection is not None
        # A failed passive declare closes its channel, hence a throwaway one.
        probe = await self._connection.channel(publisher_confirms=False)
        try:
            await probe.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            raise AgataError(ErrorCode.UNAVAILABLE, f"no service serves {queue!r}") from None
        finally:
            with contextlib.suppress(Exception):
                await probe.close()
        self._known_queues.add(queue)

    def _ready_channel(self) -> AbstractChannel:
        if self._channel is None or self._connection is None:
            raise _unavailable("not connected")
        if not self._online or self._channel.is_closed:
            raise _unavailable("reconnecting to the broker")
        return self._channel

    def _check_size(self, body: bytes) -> None:
        if len(body) > self.max_message_bytes:
            raise AgataError(
                ErrorCode.TOO_LARGE,
                f"message of {len(body)} bytes exceeds the limit of {self.max_message_bytes}",
            )

    async def request(self, queue: str, body: bytes, *, timeout: float) -> bytes:
        self._check_size(body)
        channel = self._ready_channel()
        assert self._reply_queue is not None
        correlation_id = str(uuid.uuid4())
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = (future, queue)
        try:
            async with asyncio.timeout(timeout):
                await self._check_queue_exists(queue)
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        body,
                        content_type="application/json",
                        reply_to=self._reply_queue.name,
                        correlation_id=correlation_id,
                        type=queue,
                        # The broker drops it once the caller has given up, and the
                        # consumer skips it (Delivery.deadline); the body is unchanged.
                        expiration=max(timeout, 0.001),
                        headers={DEADLINE_HEADER: int((time.time() + timeout) * 1000)},
                    ),
                    routing_key=queue,
                )
                return await future
        except TimeoutError:
            raise AgataError(
                ErrorCode.TIMEOUT, f"no reply to {queue!r} within {timeout:g} s"
            ) from None
        except RECOVERABLE_ERRORS as exc:
            raise _unavailable(str(exc) or type(exc).__name__) from None
        finally:
            self._pending.pop(correlation_id, None)

    async def publish(self, queue: str, body: bytes) -> None:
        self._check_size(body)
        channel = self._ready_channel()
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(body, content_type="application/json"), routing_key=queue
            )
        except RECOVERABLE_ERRORS as exc:
            raise _unavailable(str(exc) or type(exc).__name__) from None

    # -- service side -----------------------------------------------------------

    async def consume(self, queue: str, handler: Handler, *, prefetch: int = 64) -> Consumer:
        if self._connection is None:
            raise _unavailable("not connected")
        channel = await self._connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        # Declared exactly like the original services did (pika's defaults).
        amqp_queue = await channel.declare_queue(queue, durable=False, auto_delete=False)
        self._known_queues.add(queue)
        max_bytes = self.max_message_bytes

        async def on_message(message: AbstractIncomingMessage) -> None:
            delivery = Delivery(
                queue,
                message.body,
                message.reply_to,
                message.correlation_id,
                message.type,
                _deadline(message.headers),
            )
            try:
                if len(message.body) > max_bytes:
                    logger.warning("message of %d bytes on %s", len(message.body), queue)
                reply = await handler(delivery)
                if reply is not None and message.reply_to:
                    await channel.default_exchange.publish(
                        aio_pika.Message(
                            reply,
                            content_type="application/json",
                            correlation_id=message.correlation_id,
                        ),
                        routing_key=message.reply_to,
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("handler of queue %s failed; message dropped", queue)
            with contextlib.suppress(Exception):
                await message.ack()

        tag = await amqp_queue.consume(on_message)
        self._consumer_channels.append(channel)
        return _AmqpConsumer(channel, amqp_queue, tag)

    # -- broadcast ----------------------------------------------------------------

    async def _exchange(self, channel: AbstractChannel, topic: str) -> Any:
        return await channel.declare_exchange(
            topic, aio_pika.ExchangeType.FANOUT, durable=False, auto_delete=False
        )

    async def broadcast(self, topic: str, body: bytes) -> None:
        self._check_size(body)
        channel = self._ready_channel()
        try:
            exchange = self._exchanges.get(topic)
            if exchange is None:
                exchange = self._exchanges[topic] = await self._exchange(channel, topic)
            await exchange.publish(
                aio_pika.Message(body, content_type="application/json"), routing_key=""
            )
        except RECOVERABLE_ERRORS as exc:
            raise _unavailable(str(exc) or type(exc).__name__) from None

    async def subscribe(self, topic: str, handler: Handler) -> Consumer:
        if self._connection is None:
            raise _unavailable("not connected")
        channel = await self._connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=256)
        exchange = await self._exchange(channel, topic)
        queue = await channel.declare_queue(
            "", exclusive=True, auto_delete=True, arguments={"x-max-length": 10_000}
        )
        await queue.bind(exchange)

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                await handler(Delivery(topic, message.body))
            except Exception:
                logger.exception("subscriber of %s failed", topic)

        tag = await queue.consume(on_message, no_ack=True)
        return _AmqpConsumer(channel, queue, tag)
