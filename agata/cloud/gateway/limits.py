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
  The same protocol bounds a request *body's* time, whether or not the app reads it:
  the whole body within ``body_timeout`` seconds of its head, and at least
  ``body_min_rate`` bytes a second once ``body_grace`` seconds have passed (a client
  sending one byte every 20 s resets any idle timer, never these); it caps the bodies
  still unfinished :data:`SLOW_BODY_SECONDS` after their head at ``max_slow_bodies``
  per client address (429 beyond); and near the connection limit a new connection
  closes the oldest bodies unfinished for :data:`EVICTABLE_BODY_SECONDS` (503), as it
  closes the oldest connections waiting for a head.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import time
from collections.abc import Callable
from itertools import islice
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
#: Seconds the whole of a request body may take after its head (``body_timeout``).
BODY_TIMEOUT_SECONDS = 300.0
#: Bytes a second a request body must average once its grace has passed.
BODY_MIN_RATE = 4096.0
#: Seconds after its head before a body must keep up with the minimum rate.
BODY_GRACE_SECONDS = 10.0
#: Seconds after its head a still unfinished body counts as slow (for the address cap).
#: As long as the grace: an honest client's body follows its head at once, but a client
#: whose own event loop is overloaded (a fleet simulator in a burst) may write it
#: seconds later; a trickle slower than the minimum rate is cut at the grace anyway.
SLOW_BODY_SECONDS = 10.0
#: Seconds after its head an unfinished body may be cut to make room when the server
#: nears its connection limit (oldest first, after the connections waiting for a head).
EVICTABLE_BODY_SECONDS = 1.0
#: Slow bodies one client address may have at once (``max_slow_bodies``).
MAX_SLOW_BODIES = 16
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
            try:  # a timer, not wait_for(): no task (and loop pass) per receive
                async with asyncio.timeout(BODY_IDLE_SECONDS):
                    message = await receive()
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
    head_timeout: float = HEAD_TIMEOUT_SECONDS,
    max_head_bytes: int = MAX_HEAD_BYTES,
    *,
    body_timeout: float = BODY_TIMEOUT_SECONDS,
    body_min_rate: float = BODY_MIN_RATE,
    body_grace: float = BODY_GRACE_SECONDS,
    max_slow_bodies: int = MAX_SLOW_BODIES,
    slow_after: float = SLOW_BODY_SECONDS,
) -> type[asyncio.Protocol]:
    """Uvicorn's HTTP protocol class (httptools, else h11) with a head deadline and size
    cap: a connection that has not sent a complete request head ``head_timeout`` seconds
    after it opened (or after its previous response) is closed (408 when it had sent part
    of one); a head over ``max_head_bytes`` is answered 431 and the connection closed.
    When the server nears its connection limit (``limit_concurrency``, or the open-file
    limit), a new connection closes the oldest ones still waiting for a head, so a flood
    of idle connections cannot make the server answer 503 to everyone.

    A request body must arrive whole within ``body_timeout`` seconds of its head, and
    after ``body_grace`` seconds at ``body_min_rate`` bytes a second on average, else the
    request is answered 408 (or, once its response started, the connection closed) and
    the app sees the client disconnect. Time the server itself stops reading (the app
    is not taking the body: flow control) does not count. A body still unfinished
    ``slow_after`` seconds after its head counts against its client address: past
    ``max_slow_bodies`` of them the newest is answered 429 and its connection closed.
    Near the connection limit, after the connections waiting for a head, the oldest
    bodies unfinished for :data:`EVICTABLE_BODY_SECONDS` are answered 503 and closed.
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
    # Connections with a slow body, by client address.
    slow_bodies: dict[str, set[Any]] = {}
    # Connections with an unfinished body, oldest first.
    unfinished_bodies: dict[Any, None] = {}

    class GuardedHttpProtocol(base):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _refused = False
        _body_timer: asyncio.TimerHandle | None = None
        _body_started = 0.0
        _body_checked = 0.0
        _body_bytes = 0
        _body_slow = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()
            self._make_room()

        def _make_room(self) -> None:
            limit = min(self.limit_concurrency or files, files)
            excess = len(self.connections) - (limit - max(1, limit // 10))
            if excess <= 0:
                return
            for oldest in list(islice((c for c in waiting_heads if c is not self), excess)):
                oldest._on_head_timeout()
                excess -= 1
            # Then bodies unfinished for a while (honest bodies take milliseconds).
            old = self.loop.time() - EVICTABLE_BODY_SECONDS
            for oldest in list(islice(unfinished_bodies, max(0, excess))):
                if oldest._body_started > old:
                    break  # the rest are younger still
                oldest._evict_body()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._end_body()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # answered and closing: what still comes is dropped
            before = self.cycle
            waiting = before is None or before.response_complete  # a new head is due
            if waiting and self._head_timer is None:
                self._arm()
            if self._body_timer is not None:
                self._body_bytes += len(data)
            super().data_received(data)
            if self.cycle is None or not self.cycle.more_body:
                self._end_body()
            if self.cycle is not before:  # the head is complete: a request started
                self._disarm()
                if self.cycle.more_body and not self._refused:
                    self._start_body()
            elif waiting and (before is None or not before.more_body):
                # (not the rest of a body answered early, e.g. by a 413: uvicorn drops it)
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    self._refuse(431, "Request Header Fields Too Large", "request head too large")

        # -- the body's time -----------------------------------------------------------

        def _start_body(self) -> None:
            self._end_body()
            self._body_started = self._body_checked = self.loop.time()
            self._body_bytes = 0
            unfinished_bodies[self] = None
            self._body_timer = self.loop.call_later(
                min(slow_after, body_grace, body_timeout), self._check_body
            )

        def _end_body(self) -> None:
            unfinished_bodies.pop(self, None)
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            if self._body_slow:
                self._body_slow = False
                key = self._address()
                held = slow_bodies.get(key)
                if held is not None:
                    held.discard(self)
                    if not held:
                        del slow_bodies[key]

        def _address(self) -> str:
            return self.client[0] if self.client else ""

        def _check_body(self) -> None:
            self._body_timer = None
            cycle = self.cycle
            if cycle is None or not cycle.more_body or self.transport.is_closing():
                self._end_body()
                return
            now = self.loop.time()
            if (self.flow is not None and self.flow.read_paused) or getattr(
                cycle, "waiting_for_100_continue", False
            ):
                # The app is not taking the body (flow control), or has not asked for it
                # yet (Expect: 100-continue): the client cannot send; not its time.
                self._body_started += now - self._body_checked
            self._body_checked = now
            elapsed = now - self._body_started
            if not self._body_slow and elapsed >= slow_after:
                held = slow_bodies.setdefault(self._address(), set())
                held.add(self)
                self._body_slow = True
                if len(held) > max_slow_bodies:
                    self._cut_body(
                        429,
                        "Too Many Requests",
                        f"more than {max_slow_bodies} unfinished request bodies from this "
                        "address; send each body at once",
                        {"Retry-After": str(max(1, math.ceil(slow_after)))},
                    )
                    return
            allowed = min(body_timeout, body_grace + self._body_bytes / body_min_rate)
            if elapsed >= allowed:
                self._cut_body(
                    408,
                    "Request Timeout",
                    f"request body too slow: {self._body_bytes} bytes in {elapsed:.0f} s "
                    f"(a body must arrive within {body_timeout:g} s, at {body_min_rate:g} "
                    f"bytes/s or faster after the first {body_grace:g} s)",
                )
                return
            wait = allowed - elapsed
            if not self._body_slow:
                wait = min(wait, slow_after - elapsed)
            # (checked again at least every second: paused reading moves the deadline)
            self._body_timer = self.loop.call_later(max(0.01, min(wait, 1.0)), self._check_body)

        def _cut_body(
            self,
            status: int,
            reason: str,
            detail: str,
            headers: dict[str, str] | None = None,
            *,
            linger: bool = True,
        ) -> None:
            cycle = self.cycle
            self._end_body()
            if cycle is not None and not cycle.response_complete:
                # The app gets a disconnect and its answer is dropped: this one is sent.
                cycle.disconnected = True
                cycle.message_event.set()
            if cycle is not None and cycle.response_started:
                self.transport.close()  # too late for a status: end the connection
                return
            self._refuse(status, reason, detail, headers)
            if not linger:
                self.transport.close()  # the room is needed now (the answer may be lost)

        def _evict_body(self) -> None:
            elapsed = self.loop.time() - self._body_started
            self._cut_body(
                503,
                "Service Unavailable",
                f"the gateway is near its connection limit and this request body is still "
                f"unfinished after {elapsed:.0f} s",
                {"Retry-After": "1"},
                linger=False,
            )

        # -- the head's time -----------------------------------------------------------

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

        def _refuse(
            self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None
        ) -> None:
            self._disarm()
            if self.transport.is_closing():
                return
            body = json.dumps({"detail": detail}).encode()
            extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
            self.transport.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n".encode()
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
