"""Encoding of requests, replies and events -- the wire format of the original system.

- Request body: a JSON object (UTF-8).
- Reply body: ``{"status_code": 200, "return": value}`` or
  ``{"status_code": 4xx/5xx, "exception": "why"}``.
- Event body: ``{"time": epoch_seconds, "service": ..., "function": ..., "event": ...}``.

JSON goes through pydantic-core (Rust; already here with pydantic): compact separators,
UTF-8 left as it is, NaN and infinities written as Python's ``json`` writes them, so the
bytes are those ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)`` wrote
for the values our services send (floats may be spelled differently, e.g. ``1e-7`` for
``1e-07``; every JSON parser reads them the same). It costs a tenth of the standard
library's encoder on the small bodies RPC carries. A body pydantic-core refuses is read
again with :func:`json.loads`, so no body the standard library accepts is refused.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pydantic_core

from agata.errors import AgataError, ErrorCode


def encode(value: Any) -> bytes:
    """Compact JSON, UTF-8; raises ValueError (or TypeError) for a value JSON cannot hold."""
    return pydantic_core.to_json(value, inf_nan_mode="constants")


def decode(body: bytes) -> Any:
    """Parse JSON; raises ValueError (UnicodeDecodeError included) when it is not."""
    try:
        return pydantic_core.from_json(body)
    except ValueError:  # e.g. a lone surrogate escape, which the standard library reads
        return json.loads(body)


def decode_request(body: bytes) -> dict[str, Any]:
    """Parse a request body; raise INVALID_ARGUMENT with the reason when it is not one."""
    try:
        value = decode(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"request body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT,
            f"request body must be a JSON object, not {type(value).__name__}",
        )
    return value


#: How :func:`encode_success` begins (compact separators, ``status_code`` first).
_SUCCESS_HEAD = b'{"status_code":200,"return":'


class RawJson(bytes):
    """A value already encoded as JSON (by :func:`encode`): a handler that returns one
    has it spliced into its reply as it is, which is what a reply kept encoded between
    calls saves. The bytes MUST be one complete JSON value."""

    __slots__ = ()


class _OwnSuccess(bytes):
    """A reply body as :func:`encode_success` wrote it (status 200, the value between
    :data:`_SUCCESS_HEAD` and the last byte). Over an in-process bus the caller gets this
    very object back and need not parse the reply to learn its shape; a reply that
    crossed a broker is plain bytes and is parsed."""

    __slots__ = ()


class _OwnFailure(bytes):
    """A reply body as :func:`encode_failure` wrote it, with its status and message."""

    status_code: int
    message: str


def encode_success(value: Any) -> bytes:
    value_json = value if isinstance(value, RawJson) else encode(value)
    return _OwnSuccess(_SUCCESS_HEAD + value_json + b"}")


def encode_failure(error: AgataError) -> bytes:
    reply = _OwnFailure(encode({"status_code": error.status_code, "exception": error.message}))
    reply.status_code, reply.message = error.status_code, error.message
    return reply


def decode_reply(body: bytes, operation: str) -> Any:
    """Return the reply's value or raise the AgataError it carries."""
    if type(body) is _OwnSuccess:
        return decode(body[len(_SUCCESS_HEAD) : -1])
    if type(body) is _OwnFailure:
        raise AgataError(body.status_code, body.message)
    return _value(*_parse_reply(body, operation), operation)


def reply_value_json(body: bytes, operation: str) -> bytes:
    """The reply's value as JSON text, or raise the AgataError it carries.

    A reply in our own encoding (exactly those two keys, compact) hands over its value's
    bytes as they are, which saves encoding the value again (the HTTP gateway's case);
    a reply of any other shape, e.g. from an original service, is encoded afresh.
    """
    if type(body) is _OwnSuccess:
        return body[len(_SUCCESS_HEAD) : -1]
    if type(body) is _OwnFailure:
        raise AgataError(body.status_code, body.message)
    status, fields = _parse_reply(body, operation)
    value = _value(status, fields, operation)
    if len(fields) == 2 and body.startswith(_SUCCESS_HEAD) and body.endswith(b"}"):
        return body[len(_SUCCESS_HEAD) : -1]
    return encode(value)


def _parse_reply(body: bytes, operation: str) -> tuple[int, dict[str, Any]]:
    """The reply's status code and object; INTERNAL when it is not a reply."""
    try:
        reply = decode(body)
        return int(reply["status_code"]), reply
    except (ValueError, TypeError, KeyError) as exc:
        raise AgataError(ErrorCode.INTERNAL, f"malformed reply to {operation!r}: {exc}") from None


def _value(status: int, fields: dict[str, Any], operation: str) -> Any:
    if status == 200:
        return fields.get("return")
    message = fields.get("exception")
    raise AgataError(status, str(message) if message is not None else f"{operation} failed")


def event_body(service: str, function: str, event: str, **extra: Any) -> bytes:
    return encode(
        {"time": time.time(), "service": service, "function": function, "event": event, **extra}
    )
