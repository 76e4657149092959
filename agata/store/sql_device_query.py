"""A :class:`~agata.store.queries.DeviceQuery` as SQL (SQLAlchemy Core, SQLite and
PostgreSQL alike).

Conditions become one ``WHERE`` on ``devices``: id words as ``LIKE`` (escaped), the online
split on the ``last_seen`` index, sensors / task states / tasks / ``extra`` comparisons as
``user_id IN (SELECT …)`` on the indexes of their tables (``device_attributes`` for
``extra``), number comparisons on the columns' indexes. Without
a predicate the page is ``ORDER BY … LIMIT … OFFSET`` and the total one ``COUNT``; with
one, the candidate rows are read in order (bounded by ``scan_limit``) as the predicate's
attribute mappings (no full records), and the page is cut from what passed. The page's
records and their task states are read last, three queries for the whole page.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, true
from sqlalchemy.sql.elements import ColumnElement

from agata.errors import invalid
from agata.store import sql_schema as schema
from agata.store.queries import COMPARISONS, DEVICE_SORT_KEYS, DevicePage, DeviceQuery
from agata.store.store import Device, DeviceTaskState

_NUMBER_COLUMNS = frozenset({"data_qnt", "avg_acc_contrib", "avg_disconnection_per_round"})

DeviceMaker = Callable[[Any, list[str]], Device]
TaskStateMaker = Callable[[Any], DeviceTaskState]


def _like_escaped(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def where_clause(query: DeviceQuery) -> ColumnElement[bool]:
    """Every condition of ``query`` (not its predicate) as one SQL expression."""
    d = schema.devices.c
    parts: list[ColumnElement[bool]] = []
    ds = schema.device_sensors.c
    for word in query.words:
        has_sensor = d.user_id.in_(select(ds.user_id).where(ds.sensor == word))
        parts.append(or_(d.user_id.like(f"%{_like_escaped(word)}%", escape="\\"), has_sensor))
    if query.seen_since is not None:
        parts.append(d.last_seen >= query.seen_since)
    if query.seen_before is not None:
        parts.append(d.last_seen < query.seen_before)
    if query.revoked is not None:
        parts.append(d.revoked_at.is_not(None) if query.revoked else d.revoked_at.is_(None))
    if query.enrolled is not None:
        held = d.credential_hash.is_not(None)
        parts.append(held if query.enrolled else d.credential_hash.is_(None))
    dt = schema.device_tasks.c
    # ``user_id IN (SELECT …)``, not a correlated EXISTS: the planners read the small
    # table's index once instead of probing it for every device.
    for status in query.task_statuses:
        parts.append(d.user_id.in_(select(dt.user_id).where(dt.status == status)))
    for task_id in query.tasks:
        parts.append(d.user_id.in_(select(dt.user_id).where(dt.task_id == task_id)))
    for sensor in query.sensors:
        parts.append(d.user_id.in_(select(ds.user_id).where(ds.sensor == sensor)))
    for name, op, value in query.numbers:
        if name not in _NUMBER_COLUMNS or op not in COMPARISONS:
            raise invalid(f"q: {name}{op}{value}: not a number comparison the store knows")
        column = d[name]
        parts.append(and_(column.is_not(None), COMPARISONS[op](column, value)))
    a = schema.device_attributes.c
    for name, op, wanted in query.attributes:
        column = a.num_value if isinstance(wanted, float) else a.text_value
        if op not in COMPARISONS or (column is a.text_value and op not in ("=", "!=")):
            raise invalid(f"q: {name}{op}{wanted}: not an attribute comparison the store knows")
        test = COMPARISONS["=" if op == "!=" else op](column, wanted)
        has = d.user_id.in_(select(a.user_id).where(a.name == name, test))
        parts.append(~has if op == "!=" else has)
    return and_(true(), *parts) if parts else true()


def _order(query: DeviceQuery) -> list[Any]:
    if query.sort not in DEVICE_SORT_KEYS:
        raise invalid(f"sort: unknown key {query.sort!r}; one of {', '.join(DEVICE_SORT_KEYS)}")
    d = schema.devices.c
    column, user_id = d[query.sort], d.user_id
    if query.sort == "user_id":
        return [user_id.desc() if query.descending else user_id.asc()]
    # Devices without a value come last in either order (both backends; SQLite still
    # walks the (column, user_id) index for it).
    if query.descending:
        return [column.desc().nulls_last(), user_id.desc()]
    return [column.asc().nulls_last(), user_id.asc()]


def query_devices(
    conn: Connection, query: DeviceQuery, make: DeviceMaker, make_task: TaskStateMaker
) -> DevicePage:
    """Run ``query`` in ``conn``; ``make`` builds a record from a row and its sensors,
    ``make_task`` a task state from its row."""
    where, order = where_clause(query), _order(query)
    d = schema.devices.c
    if query.predicate is None:
        total = conn.execute(select(func.count()).select_from(schema.devices).where(where)).scalar()
        ids = list(
            conn.execute(
                select(d.user_id)
                .where(where)
                .order_by(*order)
                .limit(query.limit)
                .offset(query.offset)
            ).scalars()
        )
        return _page(conn, ids, int(total or 0), make, make_task)
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
    return _page(conn, page, len(matched), make, make_task)


def _sensors(conn: Connection, ids: list[str]) -> dict[str, list[str]]:
    sensors: dict[str, list[str]] = defaultdict(list)
    ds = schema.device_sensors
    for s in conn.execute(select(ds).where(ds.c.user_id.in_(ids)).order_by(ds.c.sensor)):
        sensors[s.user_id].append(s.sensor)
    return sensors


def _page(
    conn: Connection,
    ids: list[str],
    total: int,
    make: DeviceMaker,
    make_task: TaskStateMaker,
) -> DevicePage:
    """The records of ``ids`` (at most a page: one ``IN``), in that order, with their
    sensors and task states."""
    if not ids:
        return DevicePage([], total)
    rows = {
        r.user_id: r
        for r in conn.execute(select(schema.devices).where(schema.devices.c.user_id.in_(ids)))
    }
    sensors = _sensors(conn, ids)
    dt = schema.device_tasks
    tasks: dict[str, list[DeviceTaskState]] = defaultdict(list)
    for r in conn.execute(select(dt).where(dt.c.user_id.in_(ids)).order_by(dt.c.task_id)):
        tasks[r.user_id].append(make_task(r))
    items = [make(rows[i], sensors[i]) for i in ids if i in rows]
    return DevicePage(items, total, dict(tasks))


__all__ = ["query_devices", "where_clause"]
