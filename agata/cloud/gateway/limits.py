"""Limits of the gateway: request size, request rate per client address, slow clients.

- :class:`BodyLimit` (ASGI) refuses bodies over 1 MiB (``upload_limit`` for bundle
  uploads) with 413: at once when ``Content-Length`` says so, else (chunked) when the
  body grows past the limit. A body that stops arriving for :data:`BODY_IDLE_SECONDS`
  ends the request with 408.
- :class:`RateLimit` (ASGI) answers 429 with ``Retry-After`` when one client address
  sends more than ``rate`` requests per second on average (a token bucket of ``burst``
  requests). Off by default: the web UI, the tests and the benchmarks (thousands of
  simulated devices from one address) must never be limited, and behind a reverse
  proxy or NAT every client shares one address.
- :func:`guarded_http_protocol` is uvicorn's HTTP protocol with a deadline and a size
  cap for the request head. Uvicorn has neither: a connection that sends nothing, or
  its headers one byte at a time, stays open for ever (slow loris; its keep-alive
  timeout only starts after a response), and with ``httptools`` (``uvicorn[standard]``)
  the header size is unbounded (``h11_max_incomplete_event_size`` applies to h11 only).
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Seconds a request body may pause before the request is ended.
BODY_IDLE_SECONDS = 30.0
#: Seconds a client has to send a complete request head (after connecting, or after
#: the previous response on a kept-alive connection).
HEAD_TIMEOUT_SECONDS = 10.0
#: Largest request head (request line and headers), bytes.
MAX_HEAD_BYTES = 64 * 1024
#: Seconds a refused connection still reads (and drops) what the client sends.
LINGER_SECONDS = 1.0
#: Open files kept for everything but connections (database, logs, task pipes, bundles).
FILE_ROOM = 256


def open_files_for_connections() -> int:
    """Connections the process may hold: its open-file limit less :data:`FILE_ROOM`."""
    return max(64, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FILE_ROOM)


def make_room_for_connections(connections: int) -> int:
    """Raise the process's soft open-file limit (up to its hard limit) so that it holds
    ``connections`` besides :data:`FILE_ROOM`; return how many connections it now holds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + FILE_ROOM
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # keep the soft limit; the caller says what it allows
    return open_files_for_connections()


def _json_error(status: int, detail: str, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class BodyLimit:
    """Refuses request bodies over ``limit`` (``upload_limit`` for bundle uploads) with 413
    before reading them; a chunked body that grows past it (413), or that stalls for
    :data:`BODY_IDLE_SECONDS` (408), ends the request."""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = self.upload_limit + 64 * 1024 if path.endswith("/files") else self.limit
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                response = _json_error(413, f"request body over {limit} bytes")
                await response(scope, receive, send)
                return
        seen = 0
        body_done = False
        refusal: tuple[int, str] | None = None  # why the body was cut short
        started = replaced = False

        async def counting_receive() -> Message:
            nonlocal seen, body_done, refusal
            if body_done:  # e.g. a streaming response waiting for the disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), BODY_IDLE_SECONDS)
            except TimeoutError:
                refusal = (408, f"request body stalled for {BODY_IDLE_SECONDS:g} s")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refusal = (413, f"request body over {limit} bytes")
                    return {"type": "http.disconnect"}
                body_done = not message.get("more_body", False)
            return message

        async def refusing_send(message: Message) -> None:
            # The app answers a cut body as it can (400); the client gets why instead.
            nonlocal started, replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                if refusal is not None and not started:
                    replaced = True
                    await _json_error(*refusal)(scope, receive, send)
                    return
                started = True
            await send(message)

        await self.app(scope, counting_receive, refusing_send)


class TokenBucket:
    """Per-key token buckets: ``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)

    def take(self, key: str) -> float:
        """Take one token for ``key``: 0.0 when there was one, else the seconds to wait."""
        now = self.clock()
        tokens, updated = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self.max_keys:
                self._forget_full(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled (they equal a fresh one)."""
        refill = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < refill}
        if len(self._buckets) > self.max_keys:
            self._buckets.clear()


class RateLimit:
    """429 with ``Retry-After`` for a client address over its token bucket."""

    def __init__(self, app: ASGIApp, rate: float, burst: float) -> None:
        self.app = app
        self.bucket = TokenBucket(rate, burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait = self.bucket.take(client[0] if client else "")
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            response = _json_error(
                429,
                f"too many requests from this address; retry in {seconds} s",
                {"Retry-After": str(seconds)},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def guarded_http_protocol(
    head_timeout: float = HEAD_TIMEOUT_SECONDS, max_head_bytes: int = MAX_HEAD_BYTES
) -> type[asyncio.Protocol]:
    """Uvicorn's HTTP protocol class (httptools, else h11) with a head deadline and size
    cap: a connection that has not sent a complete request head ``head_timeout`` seconds
    after it opened (or after its previous response) is closed (408 when it had sent part
    of one); a head over ``max_head_bytes`` is answered 431 and the connection closed.
    When the server nears its connection limit (``limit_concurrency``, or the open-file
    limit), a new connection closes the oldest ones still waiting for a head, so a flood
    of idle connections cannot make the server answer 503 to everyone.
    Pass the class as ``uvicorn.Config(http=...)``; each call makes a class of its own."""
    base: Any
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # pragma: no cover - uvicorn without httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    # Connections waiting for a request head, oldest first (one server per class).
    waiting_heads: dict[Any, None] = {}
    # The open-file limit is set before the server is made (make_room_for_connections).
    files = open_files_for_connections()

    class GuardedHttpProtocol(base):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _refused = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()
            self._make_room()

        def _make_room(self) -> None:
            limit = min(self.limit_concurrency or files, files)
            excess = len(self.connections) - (limit - max(1, limit // 10))
            for oldest in list(waiting_heads)[: max(0, excess)]:
                if oldest is not self:
                    oldest._on_head_timeout()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # answered and closing: what still comes is dropped
            before = self.cycle
            waiting = before is None or before.response_complete  # a new head is due
            if waiting and self._head_timer is None:
                self._arm()
            super().data_received(data)
            if self.cycle is not before:  # the head is complete: a request started
                self._disarm()
            elif waiting and (before is None or not before.more_body):
                # (not the rest of a body answered early, e.g. by a 413: uvicorn drops it)
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    self._refuse(431, "Request Header Fields Too Large", "request head too large")

        def _arm(self) -> None:
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(head_timeout, self._on_head_timeout)
            waiting_heads[self] = None

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            self._head_bytes = 0
            waiting_heads.pop(self, None)

        def _on_head_timeout(self) -> None:
            had_bytes = self._head_bytes
            self._disarm()
            if had_bytes:
                self._refuse(408, "Request Timeout", "request head not received in time")
            elif not self.transport.is_closing():
                self.transport.close()

        def _refuse(self, status: int, reason: str, detail: str) -> None:
            self._disarm()
            if self.transport.is_closing():
                return
            body = json.dumps({"detail": detail}).encode()
            self.transport.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            # Closing now, with the client's data unread, would reset the connection and
            # could destroy the answer before the client reads it: half-close, drop what
            # still comes for a moment, then close.
            self._refused = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

    return GuardedHttpProtocol
