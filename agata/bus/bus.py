"""The bus contract every transport implements.

A bus moves opaque envelopes (bytes plus the AMQP-style properties ``reply_to``,
``correlation_id`` and ``type``) between named queues. It knows no service and no
operation: encoding, dispatch and validation live in :mod:`agata.bus.rpc` and
:mod:`agata.bus.service`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

#: Queue that carries the events of every component (fire and forget).
EVENTS_QUEUE = "events"

#: Largest message body a bus accepts, by default (1 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024


@dataclass(slots=True)
class Delivery:
    """One message taken from a queue."""

    queue: str
    body: bytes
    reply_to: str | None = None
    correlation_id: str | None = None
    type: str | None = None
    deadline: float | None = None
    """Epoch seconds (``time.time()``) after which the caller no longer waits for the
    reply; None when the publisher set none (e.g. a client of the original system)."""

    def expired(self, now: float | None = None) -> bool:
        """Whether the caller has given up on this request."""
        if self.deadline is None:
            return False
        return (time.time() if now is None else now) >= self.deadline


#: A consumer's handler: returns the reply body, or None for no reply.
Handler = Callable[[Delivery], Awaitable[bytes | None]]


class Consumer(ABC):
    """A running subscription to one queue."""

    @abstractmethod
    async def cancel(self) -> None:
        """Stop consuming.

        Messages this consumer took but has not finished handling MUST be handed back
        to the queue, so another consumer of the same queue gets them.
        """


class Bus(ABC):
    """One connection to a message bus.

    Implementations MUST keep all their state on the instance: two buses in one
    process are independent, even with the same URL on ``memory://``.
    """

    url: str
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection. Calling it twice MUST be harmless."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection and cancel every consumer.

        Pending requests MUST fail with ``UNAVAILABLE``. Calling it twice MUST be harmless.
        """

    @abstractmethod
    async def request(self, queue: str, body: bytes, *, timeout: float) -> bytes:
        """Publish ``body`` to ``queue`` and wait for the reply body.

        The message MUST carry a fresh ``correlation_id``, ``reply_to`` naming this
        bus's reply queue and ``type`` = ``queue``, and its consumer MUST see the
        caller's deadline (now + ``timeout``) as :attr:`Delivery.deadline`. MUST raise
        ``AgataError`` with ``TIMEOUT`` when no reply came within ``timeout`` seconds,
        ``UNAVAILABLE`` when no consumer was ever declared for ``queue`` or the bus is down, and
        ``TOO_LARGE`` for a body over :attr:`max_message_bytes`.
        """

    @abstractmethod
    async def publish(self, queue: str, body: bytes) -> None:
        """Publish ``body`` to ``queue`` without waiting for anything.

        A queue nobody consumes MAY drop the message.
        """

    @abstractmethod
    async def consume(self, queue: str, handler: Handler, *, prefetch: int = 64) -> Consumer:
        """Start consuming ``queue``, declaring it if needed.

        Several consumers of one queue, in this process or any other on the same
        broker, MUST share its messages (each message goes to one of them). Up to
        ``prefetch`` messages MUST be handled concurrently per consumer. When the
        handler returns bytes and the message has a ``reply_to``, the bytes MUST be
        sent there with the message's ``correlation_id``. A handler that raises MUST
        NOT stop the consumer.
        """

    @abstractmethod
    async def broadcast(self, topic: str, body: bytes) -> None:
        """Send ``body`` to every current subscriber of ``topic`` (none: dropped)."""

    @abstractmethod
    async def subscribe(self, topic: str, handler: Handler) -> Consumer:
        """Receive every message broadcast on ``topic`` from now on.

        Unlike :meth:`consume`, every subscriber gets its own copy. Handler replies
        are ignored. Delivery is best effort: a slow subscriber MAY lose messages
        rather than slow the broadcaster down.
        """

    async def __aenter__(self) -> Bus:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
