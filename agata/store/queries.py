"""Paged device queries: what a backend pushes into its database, and the page it returns.

A :class:`DeviceQuery` is built by the device registry from an operator's filter text
(:mod:`agata.cloud.criteria.device_query`); the store knows nothing of that text. Every field is a
condition the backend evaluates with its indexes; all of them must hold (AND). What no
index can answer (an arbitrary selection-criteria expression, an ordering of
``extra`` strings) comes as ``predicate``, which the backend applies to the candidate rows in sort
order over a scan bounded by ``scan_limit``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agata.store.store import Device, DeviceTaskState

#: The comparison operators of device queries, by their symbol (Python values and SQL
#: columns alike).
COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

__all__ = [
    "DEVICE_SORT_KEYS",
    "INDEXED_NAME_MAX",
    "INDEXED_TEXT_MAX",
    "NUMBER_OPERATORS",
    "DevicePage",
    "DeviceQuery",
]

#: The columns a page of devices may be sorted by (ties: by ``user_id``).
DEVICE_SORT_KEYS = (
    "user_id",
    "data_qnt",
    "avg_acc_contrib",
    "avg_disconnection_per_round",
    "last_seen",
    "created_at",
)
#: Longest ``extra`` string (characters) and attribute name kept in the index of
#: attributes (an index entry is bounded: PostgreSQL's B-tree takes about 2,700 bytes);
#: a filter for a longer string is evaluated as ``predicate``.
INDEXED_TEXT_MAX = 512
INDEXED_NAME_MAX = 255
#: Comparisons ``numbers`` may use.
NUMBER_OPERATORS = ("=", "!=", "<", "<=", ">", ">=")


@dataclass(frozen=True)
class DeviceQuery:
    """One page of devices: conditions (all must hold), order and window."""

    #: Each word is a substring of the user id or the exact name of one of its sensors.
    words: tuple[str, ...] = ()
    #: ``last_seen`` at or after this time (online) ...
    seen_since: datetime | None = None
    #: ... or strictly before it (offline).
    seen_before: datetime | None = None
    #: True: its credential was revoked (and none given since); False: it was not.
    revoked: bool | None = None
    #: True: holds a credential; False: holds none.
    enrolled: bool | None = None
    #: For each status, some task of the device is in it (``quarantined``, ``running``).
    task_statuses: tuple[str, ...] = ()
    #: For each task id, the device reported on that task.
    tasks: tuple[str, ...] = ()
    #: For each name, the device has that sensor.
    sensors: tuple[str, ...] = ()
    #: ``(field, operator, value)`` on a number field of :data:`DEVICE_SORT_KEYS`; a
    #: device without a value for the field never matches.
    numbers: tuple[tuple[str, str, float], ...] = ()
    #: ``(attribute, operator, value)`` on an ``extra`` attribute holding a string of at
    #: most :data:`INDEXED_TEXT_MAX` characters (then only ``=`` / ``!=``) or a number
    #: (a bool counts as 1 or 0, as in the criteria language). ``!=`` also matches a device
    #: without such a value; the other operators need one.
    attributes: tuple[tuple[str, str, str | float], ...] = ()
    #: Each group holds when one of its queries' conditions (all of them, not their
    #: window or predicate) hold: ``(a and b) or c`` of a criteria expression.
    any_of: tuple[tuple[DeviceQuery, ...], ...] = ()
    #: Evaluated in Python on what the conditions above let through: it gets a device's
    #: selection-criteria names (:func:`agata.cloud.services.views.device_attributes`' shape).
    predicate: Callable[[Mapping[str, Any]], bool] | None = field(default=None, compare=False)
    #: The names ``predicate`` reads (None: any): the backend may leave the others out
    #: of the mappings it builds.
    predicate_names: frozenset[str] | None = None
    sort: str = "user_id"
    descending: bool = False
    limit: int = 50
    offset: int = 0
    #: Most candidate rows ``predicate`` may be applied to (``INVALID_ARGUMENT`` beyond).
    scan_limit: int = 100_000


@dataclass(frozen=True)
class DevicePage:
    """The devices of one page and how many match in all."""

    items: list[Device]
    total: int
    #: The task states of the page's devices, by user id (absent: none).
    tasks: dict[str, list[DeviceTaskState]] = field(default_factory=dict)
