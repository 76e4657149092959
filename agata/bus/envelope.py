"""Encoding of requests, replies and events -- the wire format of the original system.

- Request body: a JSON object (UTF-8).
- Reply body: ``{"status_code": 200, "return": value}`` or
  ``{"status_code": 4xx/5xx, "exception": "why"}``.
- Event body: ``{"time": epoch_seconds, "service": ..., "function": ..., "event": ...}``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from agata.errors import AgataError, ErrorCode


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_request(body: bytes) -> dict[str, Any]:
    """Parse a request body; raise INVALID_ARGUMENT with the reason when it is not one."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"request body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT,
            f"request body must be a JSON object, not {type(value).__name__}",
        )
    return value


def encode_success(value: Any) -> bytes:
    return encode({"status_code": 200, "return": value})


def encode_failure(error: AgataError) -> bytes:
    return encode({"status_code": error.status_code, "exception": error.message})


def decode_reply(body: bytes, operation: str) -> Any:
    """Return the reply's value or raise the AgataError it carries."""
    return _value(*_parse_reply(body, operation), operation)


#: How :func:`encode_success` begins (compact separators, ``status_code`` first).
_SUCCESS_HEAD = b'{"status_code":200,"return":'


def reply_value_json(body: bytes, operation: str) -> bytes:
    """The reply's value as JSON text, or raise the AgataError it carries.

    A reply in our own encoding (exactly those two keys, compact) hands over its value's
    bytes as they are, which saves encoding the value again (the HTTP gateway's case);
    a reply of any other shape, e.g. from an original service, is encoded afresh.
    """
    status, fields = _parse_reply(body, operation)
    value = _value(status, fields, operation)
    if len(fields) == 2 and body.startswith(_SUCCESS_HEAD) and body.endswith(b"}"):
        return body[len(_SUCCESS_HEAD) : -1]
    return encode(value)


def _parse_reply(body: bytes, operation: str) -> tuple[int, dict[str, Any]]:
    """The reply's status code and object; INTERNAL when it is not a reply."""
    try:
        reply = json.loads(body)
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
