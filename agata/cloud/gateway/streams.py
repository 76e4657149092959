"""Server-sent events: the cloud's notifications fanned out to HTTP clients."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from agata.bus.bus import Bus, Consumer, Delivery
from agata.protocol.operations import NOTIFICATIONS_TOPIC

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
CLOSE = "__close__"
Filter = Callable[[dict[str, Any]], bool]


class StreamHub:
    """One bus subscription; each HTTP client gets a bounded queue of its own."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._clients: dict[asyncio.Queue[dict[str, Any]], Filter] = {}
        self._subscription: Consumer | None = None
        self._closed = asyncio.Event()
        #: Called with every notification (before the clients get it); must not raise.
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(NOTIFICATIONS_TOPIC, self._on_message)

    async def stop(self) -> None:
        self._closed.set()
        for queue in list(self._clients):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait({"kind": CLOSE})
        if self._subscription is not None:
            await self._subscription.cancel()

    @property
    def client_count(self) -> int:
        return len(self._clients)

    async def _on_message(self, delivery: Delivery) -> None:
        try:
            message = json.loads(delivery.body)
        except ValueError:
            return None
        if not isinstance(message, dict):
            return None
        for listener in self.listeners:
            listener(message)
        if message.get("kind") == "stop_task":
            return None
        for queue, accepts in list(self._clients.items()):
            if accepts(message):
                if queue.full():
                    queue.get_nowait()  # a slow client loses the oldest message
                queue.put_nowait(message)
        return None

    async def events(self, accepts: Filter) -> AsyncIterator[str]:
        """SSE text for one client until it disconnects or the hub stops."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._clients[queue] = accepts
        try:
            yield ": connected\n\n"
            while not self._closed.is_set():
                try:
                    message = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                kind = message.pop("kind", "message")
                if kind == CLOSE:
                    return
                yield f"event: {kind}\ndata: {json.dumps(message)}\n\n"
        finally:
            self._clients.pop(queue, None)
