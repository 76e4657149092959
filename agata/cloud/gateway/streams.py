"""Server-sent events: the cloud's notifications fanned out to HTTP clients."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from agata.bus.bus import Bus, Consumer, Delivery
from agata.protocol.notifications import (
    NOTIFICATIONS_TOPIC,
    Notification,
    TaskStopRequested,
    notification_data,
    parse_notification,
)

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
Filter = Callable[[Notification], bool]
#: A client's own, slower check of a message it accepted: its text (``None``: skip the
#: message), run in the client's request, never in the hub's fan-out.
Rewrite = Callable[[Notification, str], Awaitable[str | None]]


def _never(_message: Notification) -> bool:
    return False


def sse_text(notification: Notification, **more: Any) -> str:
    """One notification as an SSE event: its ``kind`` names the event, its other fields
    (and ``more``) are the data."""
    data = {**notification_data(notification), **more}
    return f"event: {notification.kind}\ndata: {json.dumps(data)}\n\n"


_Queue = asyncio.Queue[tuple[Notification, str] | None]


class StreamHub:
    """One bus subscription; each HTTP client gets a bounded queue of its own."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        # a client's queue of (message, its SSE text) (None: end the stream)
        # -> (accepts, ends)
        self._clients: dict[_Queue, tuple[Filter, Filter]] = {}
        self._subscription: Consumer | None = None
        self._closed = asyncio.Event()
        #: Called with every notification (before the clients get it); must not raise.
        self.listeners: list[Callable[[Notification], None]] = []

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(NOTIFICATIONS_TOPIC, self._on_message)

    async def stop(self) -> None:
        self._closed.set()
        for queue in list(self._clients):
            self._end(queue)
        if self._subscription is not None:
            await self._subscription.cancel()

    @property
    def client_count(self) -> int:
        return len(self._clients)

    @staticmethod
    def _end(queue: _Queue) -> None:
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(None)

    async def _on_message(self, delivery: Delivery) -> None:
        message = parse_notification(delivery.body)
        if message is None:
            return None
        for listener in self.listeners:
            listener(message)
        if isinstance(message, TaskStopRequested):  # for the services alone
            return None
        text: str | None = None  # made once, shared by every client that takes it
        for queue, (accepts, ends) in list(self._clients.items()):
            if ends(message):
                self._end(queue)
            elif accepts(message):
                if text is None:
                    text = sse_text(message)
                if queue.full():
                    queue.get_nowait()  # a slow client loses the oldest message
                queue.put_nowait((message, text))
        return None

    async def events(
        self, accepts: Filter, ends: Filter = _never, rewrite: Rewrite | None = None
    ) -> AsyncIterator[str]:
        """SSE text for one client: the notifications ``accepts`` takes (each passed
        through ``rewrite`` when given), until the client disconnects, the hub stops or
        a notification ``ends`` takes arrives."""
        queue: _Queue = asyncio.Queue(maxsize=1000)
        self._clients[queue] = (accepts, ends)
        try:
            yield ": connected\n\n"
            while not self._closed.is_set():
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if item is None:
                    return
                text: str | None = item[1]
                if rewrite is not None:
                    text = await rewrite(*item)
                if text is not None:
                    yield text
        finally:
            self._clients.pop(queue, None)
