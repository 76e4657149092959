"""The RPC client: call an operation on the bus and publish events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from agata.bus.bus import EVENTS_QUEUE, Bus
from agata.bus.envelope import decode_reply, encode, event_body, reply_value_json


class RpcClient:
    """Calls operations served by :class:`~agata.bus.service.Service` objects.

    ``call`` returns the operation's value or raises :class:`~agata.errors.AgataError`
    carrying the reply's ``status_code`` and message.
    """

    def __init__(self, bus: Bus, *, timeout: float = 10.0, service: str = "client") -> None:
        self.bus = bus
        self.timeout = timeout
        self.service = service

    async def call(
        self,
        operation: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        timeout: float | None = None,
    ) -> Any:
        return decode_reply(await self._request(operation, payload, timeout), operation)

    async def call_json(
        self,
        operation: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Like :meth:`call`, but the value comes as JSON text (to pass on as it is)."""
        return reply_value_json(await self._request(operation, payload, timeout), operation)

    async def _request(
        self,
        operation: str,
        payload: Mapping[str, Any] | BaseModel | None,
        timeout: float | None,
    ) -> bytes:
        if isinstance(payload, BaseModel):
            data: Any = payload.model_dump(mode="json", exclude_none=True)
        elif type(payload) is dict:
            data = payload  # encoded at once: nothing keeps a reference to it
        else:
            data = dict(payload or {})
        return await self.bus.request(
            operation, encode(data), timeout=self.timeout if timeout is None else timeout
        )

    async def publish_event(self, function: str, event: str, **extra: Any) -> None:
        """Publish ``{"time", "service", "function", "event", **extra}`` to ``events``."""
        await self.bus.publish(EVENTS_QUEUE, event_body(self.service, function, event, **extra))
