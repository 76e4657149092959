"""A :class:`~agata.store.queries.DeviceQuery` as SQL (SQLAlchemy Core, SQLite and
PostgreSQL alike).

Conditions become one ``WHERE`` on ``devices``: id words as ``LIKE`` (escaped), the online
split on the ``last_seen`` index, sensors / task states / tasks as ``EXISTS`` on the
indexes of their tables, number comparisons on the columns' indexes, and ``extra`` text
equality through the JSON accessor (``json_extract`` / ``->>``). Without a predicate the
page is ``ORDER BY … LIMIT … OFFSET`` and the total one ``COUNT``; with one, the candidate
rows are read in order (id and sort column only, bounded by ``scan_limit``), the predicate
is applied to each (sensors loaded in chunks), and the page is cut from what passed.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Connection, and_, exists, func, or_, select, true
from sqlalchemy.sql.elements import ColumnElement

from agata.errors import invalid
from agata.store import sql_schema as t
from agata.store.queries import DEVICE_SORT_KEYS, DevicePage, DeviceQuery
from agata.store.store import Device

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_NUMBER_COLUMNS = frozenset({"data_qnt", "avg_acc_contrib", "avg_disconnection_per_round"})
_CHUNK = 500  # ids per IN (…): well under any bound-parameter limit

DeviceLoader = Callable[[Connection, list[str]], list[Device]]


def _like_escaped(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def where_clause(query: DeviceQuery) -> ColumnElement[bool]:
    """Every condition of ``query`` (not its predicate) as one SQL expression."""
    d = t.devices.c
    parts: list[ColumnElement[bool]] = []
    for word in query.words:
        has_sensor = exists().where(
            t.device_sensors.c.user_id == d.user_id, t.device_sensors.c.sensor == word
        )
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
    dt = t.device_tasks.c
    for status in query.task_statuses:
        parts.append(exists().where(dt.user_id == d.user_id, dt.status == status))
    for task_id in query.tasks:
        parts.append(exists().where(dt.user_id == d.user_id, dt.task_id == task_id))
    for sensor in query.sensors:
        parts.append(
            exists().where(
                t.device_sensors.c.user_id == d.user_id, t.device_sensors.c.sensor == sensor
            )
        )
    for name, op, value in query.numbers:
        if name not in _NUMBER_COLUMNS or op not in _COMPARE:
            raise invalid(f"q: {name}{op}{value}: not a number comparison the store knows")
        column = d[name]
        parts.append(and_(column.is_not(None), _COMPARE[op](column, value)))
    for name, text, equal in query.extra_text:
        value = d.extra[name].as_string()
        parts.append(value == text if equal else or_(value.is_(None), value != text))
    return and_(true(), *parts) if parts else true()


def _order(query: DeviceQuery) -> list[Any]:
    if query.sort not in DEVICE_SORT_KEYS:
        raise invalid(f"sort: unknown key {query.sort!r}; one of {', '.join(DEVICE_SORT_KEYS)}")
    d = t.devices.c
    column, user_id = d[query.sort], d.user_id
    if query.sort == "user_id":
        return [user_id.desc() if query.descending else user_id.asc()]
    # Devices without a value come last in either order (as in the console's table).
    nulls_last = column.is_(None).asc()
    if query.descending:
        return [nulls_last, column.desc(), user_id.desc()]
    return [nulls_last, column.asc(), user_id.asc()]


def query_devices(conn: Connection, query: DeviceQuery, load: DeviceLoader) -> DevicePage:
    """Run ``query`` in ``conn``; ``load`` reads full records of the given ids."""
    where, order = where_clause(query), _order(query)
    d = t.devices.c
    if query.predicate is None:
        total = conn.execute(select(func.count()).select_from(t.devices).where(where)).scalar()
        ids = list(
            conn.execute(
                select(d.user_id)
                .where(where)
                .order_by(*order)
                .limit(query.limit)
                .offset(query.offset)
            ).scalars()
        )
        return DevicePage(_in_order(load(conn, ids), ids), int(total or 0))
    candidates = list(
        conn.execute(
            select(d.user_id).where(where).order_by(*order).limit(query.scan_limit + 1)
        ).scalars()
    )
    if len(candidates) > query.scan_limit:
        raise invalid(
            f"q: this filter is evaluated device by device and more than {query.scan_limit} "
            "devices would have to be read; add a term the server indexes (an id, online, "
            "offline, quarantined, revoked, running, sensor:NAME, task:ID, a number field)"
        )
    matched: list[str] = []
    predicate = query.predicate
    for start in range(0, len(candidates), _CHUNK):
        chunk = candidates[start : start + _CHUNK]
        matched.extend(x.user_id for x in _in_order(load(conn, chunk), chunk) if predicate(x))
    page = matched[query.offset : query.offset + query.limit]
    return DevicePage(_in_order(load(conn, page), page), len(matched))


def _in_order(devices: Iterable[Device], ids: list[str]) -> list[Device]:
    by_id = {x.user_id: x for x in devices}
    return [by_id[i] for i in ids if i in by_id]


def load_devices(conn: Connection, ids: list[str], make: Callable[..., Device]) -> list[Device]:
    """The records of ``ids`` (any order) with their sensors: two queries per chunk."""
    if not ids:
        return []
    out: list[Device] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        rows = conn.execute(select(t.devices).where(t.devices.c.user_id.in_(chunk))).all()
        sensors: dict[str, list[str]] = defaultdict(list)
        for s in conn.execute(
            select(t.device_sensors).where(t.device_sensors.c.user_id.in_(chunk))
        ):
            sensors[s.user_id].append(s.sensor)
        out.extend(make(r, sensors[r.user_id]) for r in rows)
    return out


__all__ = ["load_devices", "query_devices", "where_clause"]
