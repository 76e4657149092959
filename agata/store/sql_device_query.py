"""A :class:`~agata.store.queries.DeviceQuery` as SQL (SQLAlchemy Core, SQLite and
PostgreSQL alike).

Conditions are of two kinds: tests of a device's own columns (the online split on the
``last_seen`` index, number comparisons on the columns' indexes, revoked / enrolled, id
words as escaped ``LIKE``) and *sets*: the devices having a row that meets a test in
``device_sensors``, ``device_tasks`` or ``device_attributes`` (``extra``), each answered
by that table's covering index.

Without a predicate a page costs two statements, plus two for the page's sensors and
task states (``tests/store/test_device_queries.py`` counts them):

1. the exact total. A set with at most one row per device (a sensor, a task, an
   attribute test: the table's primary key says so) is joined, not probed: when every
   condition is such a set, the count reads only their indexes, never ``devices``;
   nor does an "or" of such sets alone, counted as the ``UNION`` of their ids.
2. the page's rows, in order. Either the sort key's index is walked and each row is
   tested (sets as correlated ``EXISTS``: a probe of the set's index per row, stopping
   after ``offset + limit`` matches), or the matches are collected from the sets'
   indexes (``user_id IN (SELECT …)``) and sorted. Walking reads about
   ``(offset + limit) * devices / total`` rows, collecting ``total``; SQLite's planner
   has no statistics to choose between them (it always collects), so the total from
   statement 1 decides there. PostgreSQL's planner chooses with its own statistics.

With a predicate, the candidate rows are read in order (bounded by ``scan_limit``) as
the predicate's attribute mappings (no full records), and the page is cut from what
passed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Connection,
    FromClause,
    Table,
    and_,
    func,
    literal,
    or_,
    select,
    true,
    union,
)
from sqlalchemy.sql.elements import ColumnElement

from agata.errors import invalid
from agata.store import sql_schema as schema
from agata.store.queries import COMPARISONS, DEVICE_SORT_KEYS, DevicePage, DeviceQuery
from agata.store.store import Device, DeviceTaskState

_NUMBER_COLUMNS = frozenset({"data_qnt", "avg_acc_contrib", "avg_disconnection_per_round"})
#: Sort keys without NULLs (no NULLS LAST, which PostgreSQL's backward index scan cannot give).
_NOT_NULL_SORT_KEYS = frozenset({"user_id", "last_seen", "created_at"})

DeviceMaker = Callable[[Any, list[str]], Device]
TaskStateMaker = Callable[[Any], DeviceTaskState]


def _like_escaped(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class _Set:
    """The devices having a row of ``table`` meeting every ``(column, operator, value)``
    of ``tests`` (or, ``negated``, those having none)."""

    table: Table
    tests: tuple[tuple[str, str, Any], ...]
    #: At most one row per device meets ``tests`` (the primary key covers what they test).
    unique: bool
    negated: bool = False

    def test(self, columns: Any) -> ColumnElement[bool]:
        """``tests`` on ``columns`` (the table's, or an alias's)."""
        return and_(*(COMPARISONS[op](columns[name], value) for name, op, value in self.tests))

    def member(self, probe: bool) -> ColumnElement[bool]:
        """``devices.user_id`` is in the set: a correlated probe of the set's index per
        device (``probe``), or membership of the whole set, collected once."""
        d, t = schema.devices.c, self.table.c
        held: ColumnElement[bool]
        if probe:
            held = select(literal(1)).where(t.user_id == d.user_id, self.test(t)).exists()
        else:
            held = d.user_id.in_(select(t.user_id).where(self.test(t)))
        return ~held if self.negated else held


@dataclass
class _Conditions:
    """Every condition of a query (not its predicate)."""

    #: On ``devices``' own columns.
    columns: list[ColumnElement[bool]] = field(default_factory=list)
    sets: list[_Set] = field(default_factory=list)
    #: Each is a part of the id or the name of a sensor.
    words: list[str] = field(default_factory=list)
    #: Each group holds when one of its alternatives does.
    any_of: list[list[_Conditions]] = field(default_factory=list)

    def where(self, probe: bool) -> ColumnElement[bool]:
        d = schema.devices.c
        parts = list(self.columns)
        for group in self.any_of:
            parts.append(or_(*(alternative.where(probe) for alternative in group)))
        for word in self.words:
            sensor = _Set(schema.device_sensors, (("sensor", "=", word),), unique=True)
            like = d.user_id.like(f"%{_like_escaped(word)}%", escape="\\")
            parts.append(or_(like, sensor.member(probe)))
        parts += [s.member(probe) for s in self.sets]
        return and_(true(), *parts) if parts else true()

    @property
    def empty(self) -> bool:
        return not (self.columns or self.sets or self.words or self.any_of)


def _conditions(query: DeviceQuery) -> _Conditions:
    d = schema.devices.c
    out = _Conditions(words=list(query.words))
    out.any_of = [[_conditions(alternative) for alternative in group] for group in query.any_of]
    if query.seen_since is not None:
        out.columns.append(d.last_seen >= query.seen_since)
    if query.seen_before is not None:
        out.columns.append(d.last_seen < query.seen_before)
    if query.revoked is not None:
        out.columns.append(d.revoked_at.is_not(None) if query.revoked else d.revoked_at.is_(None))
    if query.enrolled is not None:
        held = d.credential_hash.is_not(None)
        out.columns.append(held if query.enrolled else d.credential_hash.is_(None))
    for name, op, value in query.numbers:
        if name not in _NUMBER_COLUMNS or op not in COMPARISONS:
            raise invalid(f"q: {name}{op}{value}: not a number comparison the store knows")
        column = d[name]
        out.columns.append(and_(column.is_not(None), COMPARISONS[op](column, value)))
    tasks = schema.device_tasks
    for status in query.task_statuses:  # a device may have several tasks in one status
        out.sets.append(_Set(tasks, (("status", "=", status),), unique=False))
    for task_id in query.tasks:
        out.sets.append(_Set(tasks, (("task_id", "=", task_id),), unique=True))
    for sensor in query.sensors:
        out.sets.append(_Set(schema.device_sensors, (("sensor", "=", sensor),), unique=True))
    for name, op, wanted in query.attributes:
        kind = "text_value" if isinstance(wanted, str) else "num_value"
        if op not in COMPARISONS or (kind == "text_value" and op not in ("=", "!=")):
            raise invalid(f"q: {name}{op}{wanted}: not an attribute comparison the store knows")
        tests = (("name", "=", name), (kind, "=" if op == "!=" else op, wanted))
        out.sets.append(_Set(schema.device_attributes, tests, unique=True, negated=op == "!="))
    return out


def where_clause(query: DeviceQuery) -> ColumnElement[bool]:
    """Every condition of ``query`` (not its predicate) as one SQL expression."""
    return _conditions(query).where(probe=False)


def _only_joined_sets(conditions: _Conditions) -> bool:
    """Whether ``conditions`` are sets alone, each with at most one row per device."""
    return (
        bool(conditions.sets)
        and not (conditions.columns or conditions.words or conditions.any_of)
        and all(s.unique and not s.negated for s in conditions.sets)
    )


def _members(sets: list[_Set]) -> Any:
    """The ids of the devices in every one of ``sets`` (each unique, not negated), from
    the sets' indexes alone."""
    aliases = [s.table.alias(f"m{i}") for i, s in enumerate(sets)]
    source: FromClause = aliases[0]
    for a in aliases[1:]:
        source = source.join(a, a.c.user_id == aliases[0].c.user_id)
    tests = [s.test(a.c) for s, a in zip(sets, aliases, strict=True)]
    return select(aliases[0].c.user_id).select_from(source).where(*tests)


def _count(conditions: _Conditions) -> Any:
    """The statement counting the devices meeting ``conditions`` (see the module)."""
    d = schema.devices
    group = conditions.any_of[0] if len(conditions.any_of) == 1 else []
    if (
        group
        and not (conditions.columns or conditions.sets or conditions.words)
        and all(_only_joined_sets(alternative) for alternative in group)
    ):
        # One "or" of sets (``location == "lab" or "camera" in sensors``): the union of
        # their indexes' ids, never a probe of ``devices`` per id.
        members: list[Any] = [_members(alternative.sets) for alternative in group]
        either: Any = union(*members) if len(members) > 1 else members[0]
        return select(func.count()).select_from(either.subquery())
    joined = [s for s in conditions.sets if s.unique and not s.negated]
    probed = [s for s in conditions.sets if not (s.unique and not s.negated)]
    rest = _Conditions(conditions.columns, probed, conditions.words, conditions.any_of)
    aliases = [s.table.alias(f"m{i}") for i, s in enumerate(joined)]
    tests = [s.test(a.c) for s, a in zip(joined, aliases, strict=True)]
    source: FromClause
    if joined and rest.empty:  # the sets' indexes alone
        source = aliases[0]
        for a in aliases[1:]:
            source = source.join(a, a.c.user_id == aliases[0].c.user_id)
        return select(func.count()).select_from(source).where(*tests)
    source = d
    for a in aliases:
        source = source.join(a, a.c.user_id == d.c.user_id)
    return select(func.count()).select_from(source).where(rest.where(probe=False), *tests)


def _order(query: DeviceQuery, columns: Any = None) -> list[Any]:
    """The page's order on ``columns`` (``devices``' by default, or a subquery's)."""
    if query.sort not in DEVICE_SORT_KEYS:
        raise invalid(f"sort: unknown key {query.sort!r}; one of {', '.join(DEVICE_SORT_KEYS)}")
    d = schema.devices.c if columns is None else columns
    column, user_id = d[query.sort], d.user_id
    if query.sort in _NOT_NULL_SORT_KEYS:  # PostgreSQL walks its index backward for desc
        keys = [column] if query.sort == "user_id" else [column, user_id]
        return [k.desc() if query.descending else k.asc() for k in keys]
    # Devices without a value come last in either order (both backends; SQLite still
    # walks the (column, user_id) index for it, PostgreSQL only ascending).
    if query.descending:
        return [column.desc().nulls_last(), user_id.desc()]
    return [column.asc().nulls_last(), user_id.asc()]


def query_devices(
    conn: Connection, query: DeviceQuery, make: DeviceMaker, make_task: TaskStateMaker
) -> DevicePage:
    """Run ``query`` in ``conn``; ``make`` builds a record from a row and its sensors,
    ``make_task`` a task state from its row."""
    conditions, order = _conditions(query), _order(query)
    d = schema.devices.c
    if query.predicate is None:
        return _indexed_page(conn, query, conditions, order, make, make_task)
    where = conditions.where(probe=False)
    wanted = query.predicate_names
    numbers = [n for n in _NUMBER_COLUMNS if wanted is None or n in wanted]
    with_extra = wanted is None or bool(wanted - _NUMBER_COLUMNS - {"user_id", "sensors"})
    with_sensors = wanted is None or "sensors" in wanted
    columns = [d.user_id, *(d[n] for n in numbers), *([d.extra] if with_extra else [])]
    rows = conn.execute(
        select(*columns).where(where).order_by(*order).limit(query.scan_limit + 1)
    ).all()
    if len(rows) > query.scan_limit:
        raise invalid(
            f"q: this filter is evaluated device by device and more than {query.scan_limit} "
            "devices would have to be read; add a term the server indexes (an id, online, "
            "offline, quarantined, revoked, running, sensor:NAME, task:ID, NAME=VALUE)"
        )
    sensors: dict[str, list[str]] = defaultdict(list)
    if with_sensors:  # one query for every candidate
        ds = schema.device_sensors
        candidates = select(d.user_id).where(where)
        for s in conn.execute(select(ds).where(ds.c.user_id.in_(candidates)).order_by(ds.c.sensor)):
            sensors[s.user_id].append(s.sensor)
    predicate = query.predicate
    matched: list[str] = []
    for r in rows:
        names: dict[str, Any] = dict(r.extra) if with_extra else {}
        names["user_id"] = r.user_id
        names["sensors"] = sensors.get(r.user_id, [])
        for n in numbers:
            names[n] = getattr(r, n)
        if predicate(names):
            matched.append(r.user_id)
    page = matched[query.offset : query.offset + query.limit]
    return _page(conn, _rows(conn, page), len(matched), make, make_task)


def _walks(conn: Connection, query: DeviceQuery, conditions: _Conditions, total: int) -> bool:
    """Whether the page is found by walking the sort key's index (see the module)."""
    if conditions.empty or conn.dialect.name != "sqlite":
        return True  # PostgreSQL's planner picks the plan for either form
    devices = conn.execute(select(func.count()).select_from(schema.devices)).scalar_one()
    return total * total >= (query.offset + query.limit) * devices


def _indexed_page(
    conn: Connection,
    query: DeviceQuery,
    conditions: _Conditions,
    order: list[Any],
    make: DeviceMaker,
    make_task: TaskStateMaker,
) -> DevicePage:
    """A page every condition of which SQL answers: the total, then the page's rows."""
    total = int(conn.execute(_count(conditions)).scalar_one())
    if total <= query.offset:
        return DevicePage([], total)
    probe = _walks(conn, query, conditions, total)
    d = schema.devices
    window = (
        select(d.c.user_id, d.c[query.sort])
        .where(conditions.where(probe))
        .order_by(*order)
        .limit(query.limit)
        .offset(query.offset)
    )
    if conn.dialect.name == "sqlite":
        rows = list(conn.execute(window.with_only_columns(d)).all())
    else:
        # The window on the sort key's index alone, then the page's rows by their key:
        # PostgreSQL costs a walk reading whole rows as a heap fetch per row walked
        # (random_page_cost), and would rather collect and sort every match.
        rows = _rows(conn, list(conn.execute(window).scalars()))
    return _page(conn, rows, total, make, make_task)


def _sensors(conn: Connection, ids: list[str]) -> dict[str, list[str]]:
    sensors: dict[str, list[str]] = defaultdict(list)
    ds = schema.device_sensors
    for s in conn.execute(select(ds).where(ds.c.user_id.in_(ids)).order_by(ds.c.sensor)):
        sensors[s.user_id].append(s.sensor)
    return sensors


def _rows(conn: Connection, ids: list[str]) -> list[Any]:
    """The rows of ``ids`` (at most a page: one ``IN``), in that order."""
    if not ids:
        return []
    d = schema.devices
    found = {r.user_id: r for r in conn.execute(select(d).where(d.c.user_id.in_(ids)))}
    return [found[i] for i in ids if i in found]


def _page(
    conn: Connection,
    rows: list[Any],
    total: int,
    make: DeviceMaker,
    make_task: TaskStateMaker,
) -> DevicePage:
    """The records of ``rows`` (at most a page of ``devices`` rows) with their sensors
    and task states."""
    if not rows:
        return DevicePage([], total)
    ids = [r.user_id for r in rows]
    sensors = _sensors(conn, ids)
    dt = schema.device_tasks
    tasks: dict[str, list[DeviceTaskState]] = defaultdict(list)
    for r in conn.execute(select(dt).where(dt.c.user_id.in_(ids)).order_by(dt.c.task_id)):
        tasks[r.user_id].append(make_task(r))
    items = [make(r, sensors[r.user_id]) for r in rows]
    return DevicePage(items, total, dict(tasks))


__all__ = ["query_devices", "where_clause"]
