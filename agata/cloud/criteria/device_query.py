"""The operator's filter text (``q`` of ``rpc_exec_query_devices``) as a store query.

``q`` is either a list of terms separated by blanks, all of which must hold, or — when it
is not — one selection-criteria expression (:mod:`agata.cloud.criteria.criteria_language`),
which answers "which devices would this task get?". Terms:

- ``online`` / ``offline`` (polled within :data:`~agata.cloud.services.views.ONLINE_SECONDS`),
  ``quarantined`` / ``running`` (for some task), ``revoked``, ``enrolled``;
- ``sensor:NAME``, ``task:ID`` (reported on that task), ``id:TEXT`` (in the id);
- ``NAME<op>VALUE`` with ``= != < <= > >=``: a number field (``data_qnt>50``) or an
  ``extra`` attribute (``location=lab``, ``battery>=20``; quotes around a value are
  dropped);
- any other word: a part of the id or the name of a sensor.

Everything but criteria expressions and ``<``/``>`` on ``extra`` strings goes into SQL on
indexed columns (``extra`` through ``device_attributes``); those are evaluated with the
criteria compiler on the rows the rest lets through (a bounded scan, see
:class:`~agata.store.queries.DeviceQuery`).
A text that is neither raises ``INVALID_ARGUMENT`` naming ``q`` and the reason.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agata.cloud.criteria.criteria_language import compile_criteria
from agata.cloud.criteria.criteria_sql import IndexedTerms, indexed_terms
from agata.cloud.services.views import NUMBER_FIELDS, ONLINE_SECONDS
from agata.errors import AgataError, invalid
from agata.store.queries import COMPARISONS, INDEXED_NAME_MAX, INDEXED_TEXT_MAX, DeviceQuery
from agata.store.store import DeviceTaskStatus

__all__ = ["STATE_WORDS", "parse_device_filter"]

#: The words naming a state of a device.
STATE_WORDS = ("online", "offline", "quarantined", "running", "revoked", "enrolled")

_COMPARISON = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)(!=|>=|<=|=|>|<)(.+)$")
_PREFIXED = re.compile(r"^(sensor|task|id):(.+)$", re.IGNORECASE)
_WORD = re.compile(r"^[A-Za-z0-9_.@:\-]+$")


class _NotATerm(Exception):
    """The token is no filter term (``q`` is then read as criteria)."""


@dataclass
class _Terms:
    conditions: dict[str, Any] = field(default_factory=dict)
    words: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    sensors: list[str] = field(default_factory=list)
    numbers: list[tuple[str, str, float]] = field(default_factory=list)
    attributes: list[tuple[str, str, str | float]] = field(default_factory=list)
    python: list[Callable[[Mapping[str, Any]], bool]] = field(default_factory=list)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _unquoted(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _state(terms: _Terms, word: str, now: datetime) -> None:
    since = now - timedelta(seconds=ONLINE_SECONDS)
    if word == "online":
        terms.conditions["seen_since"] = since
    elif word == "offline":
        terms.conditions["seen_before"] = since
    elif word == "revoked":
        terms.conditions["revoked"] = True
    elif word == "enrolled":
        terms.conditions["enrolled"] = True
    elif word == "quarantined":
        terms.statuses.append(DeviceTaskStatus.QUARANTINED.value)
    else:
        terms.statuses.append(DeviceTaskStatus.RUNNING.value)


def _comparison(terms: _Terms, token: str, name: str, op: str, raw: str) -> None:
    value = _unquoted(raw)
    number = _number(value) if value == raw else None
    if name in NUMBER_FIELDS:
        if number is None:
            raise invalid(f"q: {token!r}: {name} is a number, {raw!r} is not")
        terms.numbers.append((name, op, number))
        return
    if name.startswith("_") or keyword.iskeyword(name):
        raise invalid(f"q: {token!r}: {name!r} cannot be an attribute name")
    indexable = number is not None or (op in ("=", "!=") and len(value) <= INDEXED_TEXT_MAX)
    if name not in ("user_id", "sensors") and len(name) <= INDEXED_NAME_MAX and indexable:
        terms.attributes.append((name, op, value if number is None else number))
        return
    terms.python.append(_comparison_test(name, op, number if number is not None else value))


def _comparison_test(name: str, op: str, wanted: Any) -> Callable[[Mapping[str, Any]], bool]:
    """``names[name] <op> wanted`` as the criteria language decides it: false without a
    value or for values that do not compare (``"a" > 1``)."""
    compare = COMPARISONS[op]

    def test(names: Mapping[str, Any]) -> bool:
        value = names.get(name)
        if value is None:
            return op == "!="
        try:
            return bool(compare(value, wanted))
        except TypeError:
            return False

    return test


def _term(terms: _Terms, token: str, now: datetime) -> None:
    lowered = token.lower()
    if lowered in STATE_WORDS:
        _state(terms, lowered, now)
        return
    prefixed = _PREFIXED.match(token)
    if prefixed:
        kind, value = prefixed.group(1).lower(), _unquoted(prefixed.group(2))
        {"sensor": terms.sensors, "task": terms.tasks, "id": terms.words}[kind].append(value)
        return
    compared = _COMPARISON.match(token)
    if compared and "==" not in token:
        _comparison(terms, token, *compared.groups())
        return
    if _WORD.match(token) and not keyword.iskeyword(token):
        terms.words.append(token)
        return
    raise _NotATerm(token)


def _criteria_query(q: str, **window: Any) -> DeviceQuery:
    try:
        criteria = compile_criteria(q)
    except AgataError as exc:
        raise invalid(
            f"q: neither filter terms nor a selection criteria expression: {exc.message}"
        ) from None
    pushed = indexed_terms(q)
    return DeviceQuery(
        **_conditions(pushed),
        predicate=None if pushed.complete else criteria.matches,
        predicate_names=frozenset(criteria.names),
        **window,
    )


def _conditions(pushed: IndexedTerms) -> dict[str, Any]:
    """The :class:`DeviceQuery` fields of translated criteria terms."""
    return {
        "numbers": tuple(pushed.numbers),
        "attributes": tuple(pushed.attributes),
        "sensors": tuple(pushed.sensors),
        "any_of": tuple(
            tuple(DeviceQuery(**_conditions(alternative)) for alternative in group)
            for group in pushed.any_of
        ),
    }


def parse_device_filter(
    q: str, *, sort: str, descending: bool, limit: int, offset: int, now: datetime | None = None
) -> DeviceQuery:
    """The store query for filter text ``q`` and this window; ``INVALID_ARGUMENT`` naming
    ``q`` when it is neither terms nor criteria."""
    window: dict[str, Any] = {
        "sort": sort,
        "descending": descending,
        "limit": limit,
        "offset": offset,
    }
    now = now or datetime.now(UTC)
    terms = _Terms()
    try:
        for token in q.split():
            _term(terms, token, now)
    except _NotATerm:
        return _criteria_query(q, **window)
    predicate = None
    if terms.python:
        tests = tuple(terms.python)

        def predicate(names: Mapping[str, Any]) -> bool:
            return all(test(names) for test in tests)

    return DeviceQuery(
        words=tuple(terms.words),
        task_statuses=tuple(dict.fromkeys(terms.statuses)),
        tasks=tuple(terms.tasks),
        sensors=tuple(terms.sensors),
        numbers=tuple(terms.numbers),
        attributes=tuple(terms.attributes),
        predicate=predicate,
        **terms.conditions,
        **window,
    )
