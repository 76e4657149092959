"""The field types of requests and replies: ids, names, bounded texts and numbers.

Each is an ``Annotated`` type whose constraints pydantic checks and writes into the JSON
schema (so ``/openapi.json`` states them). :mod:`agata.protocol.operations` builds the
request models from them; the reply models and the web UI's patterns come from here
too, so a rule is written once.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema


def _no_nul(value: Any) -> Any:
    """Refuse a string with a NUL character: PostgreSQL cannot store one, SQLite
    would, and a file name cannot hold one. Anything else passes unchanged."""
    if isinstance(value, str) and "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    return value


@dataclass(frozen=True, slots=True)
class NoNul:
    """Marks a ``str`` that may not contain NUL, for validation and JSON schema.

    The schema says it as ``pattern`` on a value; on a dict key (``key=True``) as
    ``not: {pattern: "\\x00"}``, because pydantic turns a key's ``pattern`` into
    ``patternProperties``, which leaves every other key allowed.
    """

    key: bool = False

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(_no_nul, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        value = handler(schema)
        if self.key:
            value["not"] = {"pattern": r"\x00"}
        else:
            value["pattern"] = r"^[^\x00]*$"
        return value


#: Bounds of the integers a request may carry, so that one beyond what the store keeps
#: is refused (400) before anything is written: rounds go to ``INTEGER`` columns; sizes
#: to ``BIGINT`` ones, bounded here by the largest integer JSON carries exactly
#: (2**53 - 1: a browser, or a JSON schema tool, reads numbers as doubles).
INT32_MAX = 2**31 - 1
JSON_INT_MAX = 2**53 - 1

#: Names the cloud itself uses as the source or actor of what it records (metrics and
#: log lines of a task's server side are from ``server``; events name the services and
#: the operator). A device may not take one of them as its id (compared without case),
#: or what it reports would pass for the cloud's own.
RESERVED_DEVICE_IDS = frozenset(
    {
        "server",
        "cloud",
        "operator",
        "gateway",
        "task-manager",
        "device-registry",
        "anonymous",
    }
)

TASK_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
TaskId = Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN)]
DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")]


def _not_reserved(value: str) -> str:
    if value.lower() in RESERVED_DEVICE_IDS:
        raise PydanticCustomError(
            "reserved_device_id",
            "{user_id} is reserved for the cloud's own records; choose another device id",
            {"user_id": repr(value)},
        )
    return value


def _any_case(word: str) -> str:
    """A regex matching ``word`` in any case (``-`` and ``_`` are literal as they are)."""
    return "".join(
        f"[{c.lower()}{c.upper()}]" if c.isalpha() else c if c in "-_" else re.escape(c)
        for c in word
    )


@dataclass(frozen=True, slots=True)
class NotReserved:
    """Marks a device id that may not be one of :data:`RESERVED_DEVICE_IDS` (any case),
    for validation and JSON schema (``not: {pattern: ...}``)."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(_not_reserved, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        value = handler(schema)
        words = "|".join(_any_case(word) for word in sorted(RESERVED_DEVICE_IDS))
        value["not"] = {"pattern": f"^({words})$"}
        return value


#: The id of a device acting for itself (registering, enrolling, reporting): a
#: :data:`DeviceId` that is not one of :data:`RESERVED_DEVICE_IDS`.
OwnDeviceId = Annotated[DeviceId, NotReserved()]
#: A host name or address (the store keeps 255 characters).
Host = Annotated[str, StringConstraints(min_length=1, max_length=255), NoNul()]
ShortText = Annotated[str, StringConstraints(max_length=255), NoNul()]
Criteria = Annotated[str, StringConstraints(max_length=1000), NoNul()]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64), NoNul()]


def _drop_empty_tags(value: Any) -> Any:
    """The original's create page sends ``tags: [""]`` for an empty field: empty (or
    blank) tags are dropped, not refused. Anything else is validated as given."""
    if isinstance(value, list):
        return [tag for tag in value if not (isinstance(tag, str) and not tag.strip())]
    return value


#: A task's tags: at most 64, each 1-64 characters; empty ones are dropped.
Tags = Annotated[list[Tag], BeforeValidator(_drop_empty_tags), Field(max_length=64)]
SensorName = Annotated[str, StringConstraints(min_length=1, max_length=64), NoNul()]
MetricName = Annotated[str, StringConstraints(min_length=1, max_length=255), NoNul(key=True)]
AttributeName = Annotated[str, StringConstraints(max_length=255), NoNul(key=True)]
#: A metric's value: a finite number (the store keeps no NaN or infinity).
MetricValue = Annotated[float, Field(allow_inf_nan=False)]
#: The value of an extra device attribute; NUL is refused before the union is tried,
#: so the error names the attribute and not each member of the union.
AttributeValue = Annotated[
    Annotated[str, NoNul()] | int | float | bool | None, BeforeValidator(_no_nul)
]


def _split_arguments(value: Any) -> Any:
    """Arguments may come as a shell-like string (the original) or as a list."""
    if value is None:
        return value
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split arguments: {exc}") from None
    return value


Arguments = Annotated[
    list[Annotated[str, StringConstraints(max_length=1024), NoNul()]],
    BeforeValidator(_split_arguments),
    Field(max_length=64),
]


#: What a task's bundle is: ``script`` (server.py/client.py, the original's contract) or
#: ``flower-app`` (a Flower App project on Flower's Deployment Runtime).
TaskKindName = Literal["script", "flower-app"]
