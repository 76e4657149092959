"""Component events (the experiments' timings): publishing and recording.

Every component publishes ``{"time", "service", "function", "event", ...}`` to the
``events`` queue (the original's format). The :class:`EventRecorder` of the cloud
consumes that queue and stores each event, so ``agata experiment`` can read them back
in order, and forwards it to the gateways' streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from agata.bus.bus import EVENTS_QUEUE, Bus, Consumer, Delivery
from agata.bus.envelope import encode
from agata.cloud.notifier import Notifier
from agata.errors import AgataError
from agata.store.store import Store

logger = logging.getLogger(__name__)


class EventPublisher:
    """Fire-and-forget events from synchronous code paths; never raises."""

    def __init__(self, bus: Bus, service: str, *, enabled: bool = True) -> None:
        self.bus = bus
        self.service = service
        self.enabled = enabled
        self._pending: set[asyncio.Task[None]] = set()

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
        task = asyncio.get_running_loop().create_task(self._publish(body))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, body: bytes) -> None:
        try:
            await self.bus.publish(EVENTS_QUEUE, body)
        except AgataError as exc:
            logger.debug("event not published: %s", exc.message)


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
            known = {"time", "service", "function", "event", "task_id", "user_id"}
            event = self.store.add_event(
                time=float(raw.get("time") or time.time()),
                service=str(raw.get("service", ""))[:200],
                function=str(raw.get("function", ""))[:200],
                event=str(raw.get("event", ""))[:2000],
                task_id=_optional_str(raw.get("task_id")),
                user_id=_optional_str(raw.get("user_id")),
                data={k: v for k, v in raw.items() if k not in known},
            )
        except (ValueError, TypeError, AgataError) as exc:
            logger.warning("event refused (%s): %.200r", exc, delivery.body)
            return None
        await self.notifier.notify(
            "event",
            time=event.time,
            service=event.service,
            function=event.function,
            event=event.event,
            task_id=event.task_id,
            user_id=event.user_id,
        )
        return None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)[:128]
