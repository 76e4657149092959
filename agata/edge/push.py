"""Push dispatch: the device's server-sent-event stream from the cloud.

``GET /api/devices/<user_id>/stream`` sends an event ``task`` whenever a task this
device is (or was) offered is started, stopped or changed. The event's state fields are
not trusted: an event wakes the agent's loop. When the event carries ``offers`` (the
cloud's answer to ``rpc_exec_client_requesting_task`` for this device, asked by the
gateway right after the change, see :mod:`agata.cloud.gateway.device_stream`), the
loop takes them as the answer of a poll and starts at once (:func:`pushed_offers`);
without them it asks ``rpc_exec_client_requesting_task`` itself. So a new task reaches
an idle device in one event instead of up to one poll interval, and the periodic poll
stays as the fallback for a lost stream and the authority over what runs.

The stream is reopened with backoff and jitter whenever it breaks (the cloud restarts,
the network drops); a keep-alive comment arrives every 15 s, so a connection silent for
three times that is considered dead. Every (re)connection also wakes the loop: events
may have been missed while the stream was down.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from agata.edge.backoff import Backoff, StateLog
from agata.edge.cloud_client import CloudClient
from agata.errors import AgataError, ErrorCode
from agata.protocol.offers import TaskOffer

__all__ = ["PushListener", "parse_sse", "pushed_offers"]

logger = logging.getLogger(__name__)

EventCallback = Callable[[str, Any], None]


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """Turn server-sent-event lines into ``(event name, data)`` pairs.

    Follows the SSE format: ``event:`` names the event (``message`` by default),
    ``data:`` lines are joined with newlines, a blank line ends an event, lines starting
    with ``:`` are comments (keep-alives).
    """
    name = ""
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield name or "message", "\n".join(data)
            name, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    if data:
        yield name or "message", "\n".join(data)


def pushed_offers(data: Any) -> list[TaskOffer] | None:
    """The offers a ``task`` event carries (None when it carries none: poll instead).

    An unusable item is left out with a warning, as in a poll's answer; a field that is
    not a list means no offers at all."""
    if not isinstance(data, dict) or not isinstance(data.get("offers"), list):
        return None
    offers = []
    for item in data["offers"]:
        try:
            offers.append(TaskOffer.model_validate(item))
        except ValidationError as exc:
            logger.warning("ignoring an unusable pushed task offer %.200r: %s", item, exc)
    return offers


class PushListener:
    """Keeps the device's event stream open and calls back on every event.

    Args:
        on_event: called with the event name and its data (parsed JSON, or the text
            when it is not JSON). Must not block.
        on_connected: called after each successful (re)connection.
        read_timeout: seconds of silence after which the connection is reopened.
    """

    def __init__(
        self,
        client: CloudClient,
        user_id: str,
        *,
        on_event: EventCallback,
        on_connected: Callable[[], None] = lambda: None,
        read_timeout: float = 45.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self.path = f"/api/devices/{quote(user_id, safe='')}/stream"
        self._on_event = on_event
        self._on_connected = on_connected
        self._read_timeout = read_timeout
        self._backoff = backoff or Backoff(0.2, 10.0)
        self.state = StateLog(logger, "push stream")
        self.connected = asyncio.Event()
        self.events_received = 0

    async def run(self) -> None:
        """Listen until cancelled."""
        while True:
            try:
                await self._listen_once()
                self.state.set("closed by the cloud", "reopening")
            except AgataError as exc:
                if exc.code is ErrorCode.NOT_FOUND:
                    self.state.set(
                        "not offered by this cloud", "polling only", level=logging.WARNING
                    )
                elif exc.code in (ErrorCode.UNAUTHENTICATED, ErrorCode.FORBIDDEN):
                    self.state.set("refused", exc.message, level=logging.WARNING)
                else:
                    self.state.set("disconnected", exc.message, level=logging.INFO)
            finally:
                self.connected.clear()
            if self.state.state in ("not offered by this cloud", "refused"):
                delay = self._backoff.maximum
            else:
                delay = self._backoff.next()
            await asyncio.sleep(delay)

    async def _listen_once(self) -> None:
        async with self.client.stream(self.path, read_timeout=self._read_timeout) as response:
            self.state.set("connected")
            self._backoff.reset()
            self.connected.set()
            self._on_connected()
            async for name, text in parse_sse(response.aiter_lines()):
                self.events_received += 1
                try:
                    data: Any = json.loads(text)
                except ValueError:
                    data = text
                logger.debug("push event %s: %.200s", name, text)
                try:
                    self._on_event(name, data)
                except Exception:
                    logger.exception("push event %s could not be handled", name)
