"""Admission control of the gateway: a call that cannot start soon is refused at once.

When devices come on line together (a site powers up, the cloud restarts and every
agent reconnects) the gateway receives more calls than the services can answer. Left
alone, every call waits in the event loop and on the bus until it times out, the
devices retry, and the cloud spends its time on calls whose callers have given up.
:class:`AdmissionControl` (ASGI) bounds that work instead:

- at most ``max_in_flight`` requests are being served at once, fewer while requests
  hold their place longer than ``held_target`` (:attr:`Admissions.limit`: a cloud
  short of CPU serves fewer at once, each within its callers' timeout). A place is
  held from the end of the request body until the response starts (the work that
  needs the bus and the store;
  a client sending its body slowly does not hold a place, nor does streaming the body
  of a download or an event stream afterwards). The body (at most the gateway's 1 MiB
  body limit: this middleware sits inside :class:`~agata.cloud.gateway.limits.BodyLimit`
  and the authentication of the request head) is read before a place is taken, and
  handed to the application unchanged; bundle uploads (``.../files``, operators only)
  take their place at once and stream as before;
- up to ``max_in_flight`` more wait, in order, for a place, each at most ``max_wait``
  seconds;
- any other request is answered **503 with Retry-After** at once: when the queue is
  full, when the measured service rate says its wait would exceed
  ``max_wait``, or when its wait ran out. ``Retry-After`` is the time the measured rate
  takes to serve the requests ahead, counting those refused before and not yet due
  back (1 to :data:`MAX_RETRY_AFTER` seconds; the rate
  is estimated from how long requests hold a place, see :class:`Admissions`); clients
  add jitter (``agata.retry``) so a refused fleet does not come back at once.

Liveness, metrics and the static web pages (:data:`EXEMPT_PREFIXES`) never touch the
bus and are always admitted, so a busy cloud is not mistaken for a dead one.

Operators have places of their own (:attr:`AdmissionControl.operators`, as many as
the devices', with the same rules): a fleet's burst fills the
devices' places, not the console's, so the operator can watch it happen; a runaway
operator script cannot take the devices' places either. The caller is the principal
:class:`~agata.cloud.gateway.gate.AuthGate` resolved from the request's headers (this
middleware sits inside it); a request without one (a device, an enrollment, an
anonymous caller) takes a device place.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections import deque
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agata.cloud.gateway.auth import Principal
from agata.cloud.gateway.gate import PRINCIPAL_KEY

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_WAIT",
    "EXEMPT_PREFIXES",
    "MAX_RETRY_AFTER",
    "AdmissionControl",
    "Admissions",
]

logger = logging.getLogger(__name__)

#: Default bound on requests served at once (``--max-in-flight``).
DEFAULT_MAX_IN_FLIGHT = 64
#: Default longest wait for a place, seconds (``--admission-wait``).
DEFAULT_MAX_WAIT = 1.0
#: Default longest time a request should hold a place, seconds: the gateway's places
#: shrink while requests take longer (``create_gateway`` uses a quarter of its RPC
#: timeout, so an accepted call ends well before its caller's own timeout).
DEFAULT_HELD_TARGET = 2.5
#: Largest Retry-After the gateway sends, seconds.
MAX_RETRY_AFTER = 30
#: Paths admitted without a place: they answer without the bus.
EXEMPT_PREFIXES = ("/healthz", "/metrics", "/ui")


class Admissions:
    """The places and the queue (no ASGI): :meth:`enter` waits for a place or refuses.

    The service rate is estimated from how long requests hold a place (a moving
    average): with every place taken, :attr:`limit` places each freed after that long
    serve ``limit / average`` requests a second. It does not depend on how
    busy the gateway was before a burst (a rate counted over the last seconds would
    call a cloud idle a moment ago slow, and refuse its first burst).
    """

    def __init__(
        self, max_in_flight: int, max_wait: float, *, held_target: float = DEFAULT_HELD_TARGET
    ) -> None:
        if max_in_flight < 1 or max_wait < 0 or held_target <= 0:
            raise ValueError("max_in_flight must be >= 1, max_wait >= 0, held_target > 0")
        self.max_in_flight = max_in_flight
        self.max_wait = max_wait
        self.held_target = held_target
        self.limit = max_in_flight
        """Places offered now: ``max_in_flight`` at most, one fewer after each request
        that held its place longer than ``held_target``, one more after each that took
        under half of it (a cloud short of CPU serves fewer at once, each in time)."""
        self.in_flight = 0
        self.refused = 0
        self.held_seconds: float | None = None
        """Moving average of the time a request holds a place (None before the first)."""
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._promised: list[float] = []  # heap of the times refused requests come back

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def max_queued(self) -> int:
        """Requests that may wait: as many as there are places."""
        return self.limit

    def rate(self) -> float:
        """Requests per second the places serve when all are taken (0.0: not known)."""
        if not self.held_seconds:
            return 0.0
        return self.limit / self.held_seconds

    def promised(self) -> int:
        """Refused requests told to come back later than now (each will, once)."""
        now = time.monotonic()
        while self._promised and self._promised[0] <= now:
            heapq.heappop(self._promised)
        return len(self._promised)

    def retry_after(self) -> int:
        """Whole seconds until the requests ahead are served at the estimated rate:
        those in flight, those waiting, and those refused before and told to come back
        later (so a refused fleet is handed return times spread over the time the cloud
        needs for all of it, rather than all coming back to be refused again)."""
        rate = self.rate()
        ahead = self.in_flight + self.waiting + self.promised()
        seconds = ahead / rate if rate > 0 else 1.0
        return max(1, min(MAX_RETRY_AFTER, math.ceil(seconds)))

    async def enter(self) -> int | None:
        """Take a place: None once taken (call :meth:`leave` after), else the
        Retry-After seconds of a refusal."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return None
        if self.waiting >= self.max_queued or self._expected_wait() > self.max_wait:
            return self._refuse()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.max_wait)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():  # the place came just in time
                return None
            waiter.cancel()
            return self._refuse()
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # handed a place while being cancelled: pass it on
            waiter.cancel()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return None  # leave() handed its place over (in_flight unchanged)

    def leave(self, held: float | None = None) -> None:
        """Give a place back (``held``: seconds it was held, for the rate estimate): to
        the first live waiter, else free it."""
        if held is not None:
            previous = self.held_seconds
            self.held_seconds = held if previous is None else 0.9 * previous + 0.1 * held
            if held > self.held_target:
                self.limit = max(self.min_limit, self.limit - 1)
            elif held < self.held_target / 2:
                self.limit = min(self.max_in_flight, self.limit + 1)
        while self._waiters and self.in_flight <= self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1

    @property
    def min_limit(self) -> int:
        return max(1, self.max_in_flight // 16)

    def _expected_wait(self) -> float:
        rate = self.rate()
        if rate <= 0:
            return 0.0  # nothing measured yet: wait and see
        return (self.waiting + 1) / rate

    def _refuse(self) -> int:
        self.refused += 1
        seconds = self.retry_after()
        heapq.heappush(self._promised, time.monotonic() + seconds)
        return seconds


class AdmissionControl:
    """ASGI middleware: :class:`Admissions` for every HTTP request but the exempt paths
    (operators' requests in :attr:`operators`, the others in :attr:`admissions`); a
    refused request gets 503 ``{"detail": ...}`` with ``Retry-After``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_wait: float = DEFAULT_MAX_WAIT,
        held_target: float = DEFAULT_HELD_TARGET,
        admissions: Admissions | None = None,
    ) -> None:
        self.app = app
        self.admissions = admissions or Admissions(max_in_flight, max_wait, held_target=held_target)
        self.operators = Admissions(
            self.admissions.max_in_flight,
            self.admissions.max_wait,
            held_target=self.admissions.held_target,
        )
        self._last_warning = -math.inf

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        principal = scope.get(PRINCIPAL_KEY)
        operator = isinstance(principal, Principal) and principal.is_operator
        admissions = self.operators if operator else self.admissions
        if scope.get("method") in ("POST", "PUT", "PATCH") and not scope["path"].endswith("/files"):
            receive = await _buffered(receive)
        retry_after = await admissions.enter()
        if retry_after is not None:
            self._warn(admissions, "operators'" if operator else "devices'")
            await _refusal(retry_after)(scope, receive, send)
            return
        held = True
        since = time.monotonic()

        async def releasing_send(message: Message) -> None:
            nonlocal held
            if held and message["type"] == "http.response.start":
                held = False
                admissions.leave(time.monotonic() - since)
            await send(message)

        try:
            await self.app(scope, receive, releasing_send)
        finally:
            if held:
                admissions.leave(time.monotonic() - since)

    def _warn(self, a: Admissions, lane: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            logger.warning(
                "gateway saturated (%s places): %d requests in flight, %d waiting, %.0f/s "
                "served; refusing with 503 + Retry-After (%d refused so far)",
                lane,
                a.in_flight,
                a.waiting,
                a.rate(),
                a.refused,
            )


async def _buffered(receive: Receive) -> Receive:
    """Read the request body now; return a ``receive`` that hands it over again, then
    goes on with the original (e.g. for the disconnect)."""
    messages: deque[Message] = deque()
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break

    async def replay() -> Message:
        if messages:
            return messages.popleft()
        return await receive()

    return replay


def _refusal(retry_after: int) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(
        {"detail": f"the cloud is busy; retry in {retry_after} s"},
        status_code=503,
        headers={"Retry-After": str(retry_after)},
    )
