"""What a device's event stream (``GET /api/devices/<user_id>/stream``) may carry.

A device hears only of its own tasks: a ``task`` notification reaches its stream when
the task is offered to it now (running and matching it) or was offered to it at the
last look (so it hears that a task it runs stopped, changed or no longer matches).
Any other task's notification is dropped: a device's stream carries neither the ids
nor the states of tasks it does not match, the same rule as its reports
(:mod:`agata.cloud.services.report_scope`).

"Offered" is the task manager's own answer to ``rpc_exec_client_requesting_task``,
asked once when the stream opens and once per task notification the stream takes, in
the stream's own request (never in the hub's fan-out). An agent asks the same question
when its stream wakes it, so the stream's question costs no more than one poll of the
devices that had been woken before; the devices a task does not concern are no longer
woken at all. When the question cannot be answered (a service is away) the device gets
a ``task`` event without content: it wakes up and asks itself, and learns nothing.

A stream opened with the device's own credential also gets that answer: the ``task``
event it takes carries ``offers``, the list ``rpc_exec_client_requesting_task`` gave
for this device right after the change (the same call and reply as its poll), so the
agent can start at once without asking again. It is what the device would be offered,
never more; an agent that ignores the field polls as before.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from agata.bus.rpc import RpcClient
from agata.cloud.gateway.streams import sse_text
from agata.errors import AgataError, ErrorCode
from agata.protocol import operations as ops
from agata.protocol.notifications import Notification, TaskChanged

logger = logging.getLogger(__name__)

#: The event sent when the device's offers could not be looked up: "look yourself".
WAKE_UP: Final = "event: task\ndata: {}\n\n"


class DeviceStreamScope:
    """The tasks one device's stream may tell it about (module docstring)."""

    def __init__(self, rpc: RpcClient, user_id: str, *, with_offers: bool = False) -> None:
        self.rpc = rpc
        self.user_id = user_id
        self.with_offers = with_offers
        self.offered: frozenset[str] = frozenset()
        self.offers: list[Any] = []

    async def refresh(self) -> bool:
        """Ask which tasks the device is offered; False when no answer came.

        A device that has not registered yet (404) is offered nothing."""
        try:
            offers = await self.rpc.call(
                ops.CLIENT_REQUESTING_TASK, {"user_id": self.user_id, "legacy": False}
            )
        except AgataError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                self.offered = frozenset()
                return True
            logger.debug("offers of device %s not known: %s", self.user_id, exc.message)
            return False
        self.offers = offers if isinstance(offers, list) else []
        self.offered = frozenset(
            offer["ID"]
            for offer in self.offers
            if isinstance(offer, dict) and isinstance(offer.get("ID"), str)
        )
        return True

    async def rewrite(self, message: Notification, text: str) -> str | None:
        """``text`` if the notification concerns this device, else None (dropped)."""
        if not isinstance(message, TaskChanged):
            return text  # the stream's own filter took it for this device alone
        task_id = message.task_id
        was_offered = task_id in self.offered
        if not await self.refresh():
            return WAKE_UP
        if not (was_offered or task_id in self.offered):
            return None
        if self.with_offers:
            return sse_text(message, offers=self.offers)
        return text
