"""Broadcast of cloud changes to every gateway (web UI streams, device push)."""

from __future__ import annotations

import logging
from typing import Any

from agata.bus.bus import Bus
from agata.bus.envelope import encode
from agata.errors import AgataError
from agata.protocol.operations import NOTIFICATIONS_TOPIC

logger = logging.getLogger(__name__)


class Notifier:
    """Sends ``{"kind": ..., **fields}`` on the notifications topic; never raises."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def notify(self, kind: str, **fields: Any) -> None:
        try:
            await self.bus.broadcast(NOTIFICATIONS_TOPIC, encode({"kind": kind, **fields}))
        except AgataError as exc:
            logger.debug("notification %s not sent: %s", kind, exc.message)
