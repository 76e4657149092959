"""Argument checks shared by store implementations.

They make every backend refuse the same values with the same ``INVALID_ARGUMENT``
message, instead of SQLite storing what PostgreSQL would reject (NUL characters,
over-long ids, NaN in JSON).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from agata.errors import AgataError, ErrorCode, invalid
from agata.store.store import BundleFile, DeviceTaskStatus, TaskState

_Choice = TypeVar("_Choice", bound=StrEnum)

MAX_ID = 255
"""Longest id, name, host, tag, sensor or hash (characters)."""
MAX_FILE_NAME = 1024
INT32_MAX = 2**31 - 1
"""Largest value of an ``INTEGER`` column (rounds, versions, uses) on every backend."""
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
"""Range of a ``BIGINT`` column (sizes, process ids, sequence numbers); SQLite's
``INTEGER`` holds the same and no more."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


def text(name: str, value: object, max_len: int | None = None, *, empty: bool = True) -> str:
    """``value`` if it is a string the store can keep, else ``INVALID_ARGUMENT``."""
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string")
    if not empty and not value:
        raise invalid(f"{name} must not be empty")
    if max_len is not None and len(value) > max_len:
        raise invalid(f"{name} is longer than {max_len} characters")
    if "\x00" in value:
        raise invalid(f"{name} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"{name} is not valid Unicode (lone surrogate)") from None
    return value


def ident(name: str, value: object) -> str:
    """A non-empty id of at most :data:`MAX_ID` characters."""
    return text(name, value, MAX_ID, empty=False)


def strings(name: str, values: Iterable[str], max_len: int | None = None) -> tuple[str, ...]:
    """A sequence of strings (a bare string is refused: it is almost always a mistake)."""
    if isinstance(values, str | bytes):
        raise invalid(f"{name} must be a list of strings")
    return tuple(text(name, v, max_len) for v in values)


def unique(name: str, values: Iterable[str]) -> tuple[str, ...]:
    """Non-empty short strings, duplicates dropped, first order kept."""
    return tuple(dict.fromkeys(ident(name, v) for v in strings(name, values)))


def integer(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """An int between ``low`` and ``high`` (bools refused).

    Bounds left out default to the ``BIGINT`` range, so no value reaches a backend
    that would fail to convert it (SQLite raises ``OverflowError`` past 64 bits,
    PostgreSQL refuses it): out of range is ``INVALID_ARGUMENT`` on every store.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} must be an integer")
    low = INT64_MIN if low is None else max(low, INT64_MIN)
    high = INT64_MAX if high is None else min(high, INT64_MAX)
    if value < low or value > high:
        raise invalid(f"{name} must be between {low} and {high}")
    return value


def number(name: str, value: object) -> float:
    """A finite float (ints accepted, bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"{name} must be a number")
    try:
        result = float(value)
    except OverflowError:  # an int beyond the range of a float
        raise invalid(f"{name} must be a finite number") from None
    if not math.isfinite(result):
        raise invalid(f"{name} must be a finite number")
    return result


def json_object(name: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON-serializable dict (string keys, no NaN); ``None`` becomes ``{}``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise invalid(f"{name} must be an object")
    result = dict(value)
    try:
        encoded = json.dumps(result, allow_nan=False, ensure_ascii=False)
        encoded.encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise invalid(f"{name} is not JSON-serializable ({type(exc).__name__})") from None
    if not all(isinstance(k, str) for k in result):
        raise invalid(f"{name} keys must be strings")
    return result


def metrics(value: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise invalid("metrics must be an object of name → number")
    return {ident("metric name", k): number(f"metric {k!r}", v) for k, v in value.items()}


def files(values: Sequence[BundleFile]) -> tuple[BundleFile, ...]:
    """Bundle files sorted by name; names unique, sizes ≥ 0, sha256 lowercase hex."""
    result: dict[str, BundleFile] = {}
    for f in values:
        if not isinstance(f, BundleFile):
            raise invalid("files must be BundleFile records")
        name = text("file name", f.name, MAX_FILE_NAME, empty=False)
        if name in result:
            raise invalid(f"file {name!r} is listed twice")
        integer("file size", f.size, 0, INT64_MAX)
        if not isinstance(f.sha256, str) or not _SHA256.fullmatch(f.sha256):
            raise invalid(f"sha256 of {name!r} must be 64 lowercase hex digits")
        result[name] = f
    return tuple(result[k] for k in sorted(result))


def member(name: str, kind: type[_Choice], value: _Choice | str) -> _Choice:
    """``value`` as a member of the enum ``kind``; INVALID_ARGUMENT naming the choices."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise invalid(f"{name} must be one of {choices}") from None


def task_state(running: bool, state: TaskState | str) -> TaskState:
    parsed = member("task state", TaskState, state)
    if not isinstance(running, bool):
        raise invalid("running must be a boolean")
    if running != (parsed is TaskState.RUNNING):
        raise invalid(f"running={running} contradicts state {parsed.value!r}")
    return parsed


def device_status(status: DeviceTaskStatus | str) -> DeviceTaskStatus:
    return member("device task status", DeviceTaskStatus, status)


def aware(name: str, value: datetime | None) -> datetime | None:
    """A timezone-aware datetime converted to UTC; naive ones are ambiguous and refused."""
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"{name} must be a timezone-aware datetime")
    return value.astimezone(UTC)
