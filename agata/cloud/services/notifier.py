"""Broadcast of cloud changes to every gateway (web UI streams, device push)."""

from __future__ import annotations

import logging

from agata.bus.bus import Bus
from agata.errors import AgataError
from agata.protocol.notifications import NOTIFICATIONS_TOPIC, Notification, encode_notification

logger = logging.getLogger(__name__)


class Notifier:
    """Sends notifications (:mod:`agata.protocol.notifications`) on the notifications
    topic; never raises."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def notify(self, notification: Notification) -> None:
        try:
            await self.bus.broadcast(NOTIFICATIONS_TOPIC, encode_notification(notification))
        except AgataError as exc:
            logger.debug("notification %s not sent: %s", notification.kind, exc.message)
