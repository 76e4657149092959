"""The service base: operations with pydantic request models, served on the bus.

Each operation is a queue of the same name. A message is dispatched by its ``type``
property, like the original system (falling back to the queue name), so a client of
the original system gets the original answers:

- invalid request (not JSON, not an object, schema) -> 400 with the reason;
- unknown operation -> 500 ``"<name> is an invalid RPC function"``;
- a handler raising :class:`AgataError` -> its status and message;
- any other exception -> 500 with its message (or a generic text when
  ``hide_internal_errors`` is on); the service keeps serving.

Bounded work: at most ``max_in_flight`` requests are handled at once, over all the
service's operations (the bus's ``prefetch`` bounds what each queue hands over); the
others wait for a place. A request whose caller has given up
(:meth:`~agata.bus.bus.Delivery.expired`) is not served: no handler runs, no reply is
sent (nobody waits for it), and :attr:`Service.expired` counts it. So after a burst the
service works through what its callers still wait for instead of a backlog of calls
that already timed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from agata.bus.bus import Bus, Consumer, Delivery
from agata.bus.envelope import decode_request, encode_failure, encode_success
from agata.errors import AgataError, ErrorCode

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
OperationHandler = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    model: type[BaseModel]
    handler: OperationHandler


def describe_errors(errors: Sequence[Any]) -> str:
    """One readable line per problem: ``field: message``."""
    parts = []
    for item in errors:
        where = ".".join(_place(p) for p in item["loc"] if p != "body") or "body"
        parts.append(f"{where}: {item['msg']}")
    return "invalid arguments: " + "; ".join(parts)


def _place(part: object) -> str:
    """A part of an error's location; an empty dict key or one with control characters
    (NUL) is quoted."""
    text = str(part)
    return text if text and text.isprintable() else repr(text)


def describe_validation_error(error: ValidationError) -> str:
    return describe_errors(error.errors())


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    return value


#: Validation errors of ``model_validate_json`` that mean the body is no JSON object.
_NOT_AN_OBJECT = frozenset({"json_invalid", "json_type", "model_type", "model_attributes_type"})


def _validated(model: type[M], body: bytes) -> M:
    """The request as ``model``, parsed and validated in one pass (pydantic-core reads
    the JSON itself); INVALID_ARGUMENT with the reason otherwise. A body that is no JSON
    object gets the reason :func:`~agata.bus.envelope.decode_request` words."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        if not any(e["type"] in _NOT_AN_OBJECT and not e["loc"] for e in errors):
            raise AgataError(ErrorCode.INVALID_ARGUMENT, describe_errors(errors)) from None
    # Not JSON, or not an object, or JSON only the standard library reads (a lone
    # surrogate escape): decode_request says which, or hands over the object.
    data = decode_request(body)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, describe_validation_error(exc)) from None


class _Places:
    """At most ``count`` requests handled at once; the others wait, first come first
    served. A free place is taken without an ``await`` (``async with`` an
    :class:`asyncio.Semaphore` cost a sixth of a memory:// round trip)."""

    def __init__(self, count: int) -> None:
        self.free = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """Take a free place if one is there and nobody waits for it."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Wait until :meth:`release` hands this caller a place."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a place while being cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a place back: to the first live waiter, else free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class Service:
    """A set of operations served on one bus."""

    def __init__(
        self,
        bus: Bus,
        name: str,
        *,
        hide_internal_errors: bool = False,
        prefetch: int = 64,
        max_in_flight: int = 64,
    ) -> None:
        self.bus = bus
        self.name = name
        self.hide_internal_errors = hide_internal_errors
        self.prefetch = prefetch
        self.max_in_flight = max_in_flight
        """Requests handled at once; read by :meth:`start`."""
        self.expired = 0
        """Requests not served because their caller had given up."""
        self._places: _Places | None = None
        self._last_expired_log = -1e9
        self.operations: dict[str, Operation] = {}
        self._consumers: list[Consumer] = []

    def add_operation(
        self, name: str, model: type[M], handler: Callable[[M], Awaitable[Any]]
    ) -> None:
        if name in self.operations:
            raise ValueError(f"operation {name!r} registered twice")
        self.operations[name] = Operation(name, model, handler)

    def operation(
        self, name: str, model: type[M]
    ) -> Callable[[Callable[[M], Awaitable[Any]]], Callable[[M], Awaitable[Any]]]:
        """Decorator form of :meth:`add_operation`."""

        def register(handler: Callable[[M], Awaitable[Any]]) -> Callable[[M], Awaitable[Any]]:
            self.add_operation(name, model, handler)
            return handler

        return register

    async def start(self) -> None:
        """Consume one queue per operation (replicas on one broker share them)."""
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._places = _Places(self.max_in_flight)
        for name in self.operations:
            self._consumers.append(
                await self.bus.consume(name, self.handle_delivery, prefetch=self.prefetch)
            )
        logger.info("service %s serving %d operations", self.name, len(self.operations))

    async def stop(self) -> None:
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            await consumer.cancel()

    async def handle_delivery(self, delivery: Delivery) -> bytes | None:
        if not delivery.reply_to:
            logger.warning(
                "message on %s without reply_to (correlation_id %s) ignored: nowhere to reply",
                delivery.queue,
                delivery.correlation_id,
            )
            return None
        places = self._places
        if places is None:  # not started (a test calling it directly)
            places = self._places = _Places(self.max_in_flight)
        if delivery.expired():
            self._skip_expired(delivery)
            return None
        if not places.take():
            await places.wait()
            if delivery.expired():  # it waited for a place longer than its caller
                places.release()
                self._skip_expired(delivery)
                return None
        try:
            return await self.handle(delivery.type or delivery.queue, delivery.body)
        finally:
            places.release()

    def _skip_expired(self, delivery: Delivery) -> None:
        self.expired += 1
        now = time.monotonic()
        if now - self._last_expired_log >= 10.0:
            self._last_expired_log = now
            logger.warning(
                "service %s is behind: skipped a request on %s whose caller had given up "
                "(%d so far)",
                self.name,
                delivery.queue,
                self.expired,
            )
        return None

    async def handle(self, operation: str, body: bytes) -> bytes:
        """Run one request and return the reply body; never raises."""
        try:
            if len(body) > self.bus.max_message_bytes:
                raise AgataError(
                    ErrorCode.TOO_LARGE,
                    f"request of {len(body)} bytes exceeds the limit of "
                    f"{self.bus.max_message_bytes}",
                )
            op = self.operations.get(operation)
            if op is None:
                raise AgataError(ErrorCode.INTERNAL, f"{operation} is an invalid RPC function")
            result = await op.handler(_validated(op.model, body))
            return encode_success(to_jsonable(result))
        except AgataError as exc:
            if exc.status_code >= 500:
                logger.error("%s.%s failed: %s", self.name, operation, exc.message)
            else:
                logger.info("%s.%s refused: %s", self.name, operation, exc.message)
            return encode_failure(exc)
        except Exception as exc:
            logger.exception("%s.%s crashed", self.name, operation)
            message = "internal error" if self.hide_internal_errors else f"internal error: {exc}"
            return encode_failure(AgataError(ErrorCode.INTERNAL, message))
