"""The SQL store: SQLite (default) or PostgreSQL through SQLAlchemy 2 Core, synchronously.

Features: every method is one short transaction; the schema is created on
:meth:`SqlStore.initialize` and versioned in ``schema_version``; a task's log keeps its
last ``log_cap`` lines; errors are translated by :mod:`agata.store.sql_errors`.

URL format (see :func:`agata.store.store_factory.create_store`, which builds the engine):
``sqlite://`` (in memory), ``sqlite:///relative.db``, ``sqlite:////absolute.db``,
``postgresql://user:password@host:port/database``.

Options: ``log_cap`` (lines kept per task), ``busy_timeout`` (seconds SQLite waits for
another writer before the call fails with ``UNAVAILABLE``).

On SQLite, writes start with ``BEGIN IMMEDIATE``, so a transaction that reads and then
writes cannot fail half-way when another connection wrote in between (WAL snapshots
cannot be upgraded); readers use a plain deferred ``BEGIN`` and never wait on writers.
On PostgreSQL (READ COMMITTED), every read-modify-write first locks the row it
depends on (``UPDATE … RETURNING`` or ``SELECT … FOR UPDATE``).
"""

from __future__ import annotations

import logging
import threading
import time as _time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    delete,
    false,
    insert,
    inspect,
    or_,
    select,
    true,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import ColumnElement

from agata.errors import AgataError, ErrorCode, conflict, invalid, not_found
from agata.store import sql_device_query, validation
from agata.store import sql_schema as schema
from agata.store.loop_guard import check_not_on_loop
from agata.store.passwords import hash_password
from agata.store.queries import INDEXED_NAME_MAX, INDEXED_TEXT_MAX, DevicePage, DeviceQuery
from agata.store.run_store import Artifact
from agata.store.sql_errors import translate
from agata.store.sql_run_store import (
    SqlRunStore,
    _artifact,
    _run,
    add_runs,
    current_run,
    end_current_run,
    record_metric_in_run,
    record_participation,
    require_run,
    run_number,
)
from agata.store.sql_schema import iso, utc_now
from agata.store.store import (
    BundleFile,
    Device,
    DeviceTaskState,
    DeviceTaskStatus,
    EnrollmentToken,
    Event,
    LogLine,
    Metric,
    NewEvent,
    NewLogLine,
    NewTask,
    OperatorToken,
    Store,
    Task,
    TaskKind,
    TaskProgress,
    TaskState,
)

__all__ = ["DEFAULT_LOG_CAP", "MAX_LIST", "MAX_LOG_LINE", "WRITE_OPTION", "SqlStore"]

logger = logging.getLogger(__name__)

DEFAULT_LOG_CAP = 5000
MAX_LIST = 10_000
"""Most rows one ``list_events`` call returns."""
MAX_LOG_LINE = 65_536
"""Longer log lines are cut (characters) and marked."""
_GONE = "the task or device was deleted at the same time; try again"
_PG_INIT_LOCK = 0x4147415441  # "AGATA": serializes schema creation across replicas
WRITE_OPTION = "agata_write"
"""Execution option set on a connection whose transaction will write (SQLite: IMMEDIATE)."""


def _log_text(value: str) -> str:
    """Log text as the database can keep it: NUL and lone surrogates replaced, length cut."""
    if not isinstance(value, str):
        raise invalid("log text must be a string")
    if len(value) > MAX_LOG_LINE:
        value = value[:MAX_LOG_LINE] + " …[truncated]"
    value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _exists(conn: Connection, key: Any, value: str) -> bool:
    return conn.execute(select(key).where(key == value)).first() is not None


def _require_device(conn: Connection, user_id: str) -> None:
    if not _exists(conn, schema.devices.c.user_id, user_id):
        raise not_found(f"device {user_id!r} not found")


class SqlStore(SqlRunStore, Store):
    """A :class:`Store` on a SQLAlchemy engine (SQLite or PostgreSQL).

    Build it with :func:`agata.store.store_factory.create_store`, which configures the
    engine (pragmas, ``BEGIN`` modes, pools) and calls :meth:`initialize`.
    """

    def __init__(
        self, engine: Engine, *, log_cap: int = DEFAULT_LOG_CAP, busy_timeout: float = 5.0
    ) -> None:
        self._engine = engine
        self._log_cap = validation.integer("log_cap", log_cap, 1)
        self._busy_timeout = busy_timeout
        self._pg = engine.dialect.name == "postgresql"
        # One shared connection (SQLite in memory) must not interleave two transactions.
        self._serial = threading.RLock() if isinstance(engine.pool, StaticPool) else None
        # SQLite takes one writer at a time: this process's writers queue here, woken as
        # soon as the one before commits, rather than in SQLite's busy handler, which
        # polls the lock with sleeps of 1 to 100 ms (writers of other processes still
        # wait there, up to busy_timeout).
        self._writers = threading.RLock() if not self._pg and self._serial is None else None
        self._closed = False

    @property
    def engine(self) -> Engine:
        return self._engine

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _tx(
        self, operation: str, *, write: bool = False, conflict: str | None = None
    ) -> Iterator[Connection]:
        """One transaction; every database error leaves as an :class:`AgataError`."""
        if self._closed:
            raise AgataError(ErrorCode.UNAVAILABLE, "the store is closed")
        check_not_on_loop(operation)
        serial = self._serial if self._serial is not None else self._writers if write else None
        queued = 0.0  # seconds this write waited for the writers before it
        if serial is self._writers and serial is not None:
            started = _time.monotonic()
            if not serial.acquire(timeout=self._busy_timeout):
                raise AgataError(
                    ErrorCode.UNAVAILABLE,
                    "the database is locked by a write transaction (gave up after waiting "
                    f"{self._busy_timeout:g} s); try again",
                )
            queued = _time.monotonic() - started
        elif serial is not None:
            serial.acquire()
        try:
            with self._engine.connect() as conn:
                conn.execution_options(**{WRITE_OPTION: write})
                if queued > 0.01:  # the wait in the queue counts against busy_timeout
                    self._set_busy_timeout(conn, self._busy_timeout - queued)
                try:
                    with conn.begin():
                        yield conn
                finally:
                    if queued > 0.01:
                        self._set_busy_timeout(conn, self._busy_timeout)
        except (SQLAlchemyError, UnicodeError) as exc:
            raise translate(
                exc, operation, conflict=conflict, busy_timeout=self._busy_timeout
            ) from None
        finally:
            if serial is not None:
                serial.release()

    @staticmethod
    def _set_busy_timeout(conn: Connection, seconds: float) -> None:
        """SQLite's wait for another process's writer, on this connection (outside a
        transaction: on the driver's connection, which does not begin one)."""
        milliseconds = max(1, int(seconds * 1000))
        conn.connection.driver_connection.execute(  # type: ignore[union-attr]
            f"PRAGMA busy_timeout = {milliseconds}"
        )

    def _insert_ignore(self, table: Any, keys: list[str], values: dict[str, Any]) -> Any:
        stmt = (pg_insert if self._pg else sqlite_insert)(table).values(**values)
        return stmt.on_conflict_do_nothing(index_elements=keys)

    def _upsert(self, table: Any, keys: list[str], values: dict[str, Any]) -> Any:
        stmt = (pg_insert if self._pg else sqlite_insert)(table).values(**values)
        changes = {k: stmt.excluded[k] for k in values if k not in keys}
        return stmt.on_conflict_do_update(index_elements=keys, set_=changes)

    def initialize(self) -> None:
        """Create missing tables and check (or migrate) the schema version."""
        with self._tx("initialize", write=True) as conn:
            if self._pg:
                conn.execute(sql_text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_INIT_LOCK})
            schema.metadata.create_all(conn)
            stored = conn.execute(select(schema.schema_version.c.version)).scalar()
            if stored is None:
                conn.execute(
                    insert(schema.schema_version).values(
                        id=1, version=schema.SCHEMA_VERSION, updated_at=utc_now()
                    )
                )
                logger.info("store schema created at version %s", schema.SCHEMA_VERSION)
            elif stored > schema.SCHEMA_VERSION:
                raise AgataError(
                    ErrorCode.INTERNAL,
                    f"the database schema is version {stored}, newer than this AGATA "
                    f"understands ({schema.SCHEMA_VERSION}): upgrade AGATA",
                )
            elif stored < schema.SCHEMA_VERSION:
                self._migrate(conn, stored)

    def _migrate(self, conn: Connection, stored: int) -> None:
        """Bring a schema from ``stored`` up to :data:`sql_schema.SCHEMA_VERSION`.

        Each step is a function ``(conn) -> None`` taking version N to N+1, run in the
        transaction of :meth:`initialize`.
        """
        steps: dict[int, Any] = {
            1: _add_task_limits,
            2: _hash_task_passwords,
            3: _add_device_queries,
            4: _add_task_kind,
            5: add_runs,
            6: _add_quarantine_expiry,
        }
        for version in range(stored, schema.SCHEMA_VERSION):
            step = steps.get(version)
            if step is None:
                raise AgataError(
                    ErrorCode.INTERNAL, f"no migration from store schema version {version}"
                )
            step(conn)
        conn.execute(
            update(schema.schema_version).values(
                version=schema.SCHEMA_VERSION, updated_at=utc_now()
            )
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    # -- tasks ---------------------------------------------------------------------------

    def _load_tasks(self, conn: Connection, where: ColumnElement[bool]) -> list[Task]:
        """Tasks matching ``where`` with tags and files: always three queries."""
        rows = conn.execute(
            select(schema.tasks)
            .where(where)
            .order_by(schema.tasks.c.created_at, schema.tasks.c.task_id)
        ).all()
        if not rows:
            return []
        ids = select(schema.tasks.c.task_id).where(where).scalar_subquery()
        tags: dict[str, list[str]] = defaultdict(list)
        for tag in conn.execute(
            select(schema.task_tags.c.task_id, schema.task_tags.c.tag)
            .where(schema.task_tags.c.task_id.in_(ids))
            .order_by(schema.task_tags.c.task_id, schema.task_tags.c.position)
        ):
            tags[tag.task_id].append(tag.tag)
        files: dict[str, list[BundleFile]] = defaultdict(list)
        for f in conn.execute(
            select(schema.task_files)
            .where(schema.task_files.c.task_id.in_(ids))
            .order_by(schema.task_files.c.task_id, schema.task_files.c.name)
        ):
            files[f.task_id].append(BundleFile(name=f.name, size=f.size, sha256=f.sha256))
        return [self._task(r, tags[r.task_id], files[r.task_id]) for r in rows]

    @staticmethod
    def _task(r: Row[Any], tags: list[str], files: list[BundleFile]) -> Task:
        return Task(
            task_id=r.task_id,
            host=r.host,
            port=r.port,
            username=r.username,
            password_hash=r.password,
            selection_criteria=r.selection_criteria,
            server_arguments=tuple(r.server_arguments),
            client_arguments=tuple(r.client_arguments),
            tags=tuple(tags),
            running=bool(r.running),
            state=TaskState(r.state),
            state_reason=r.state_reason,
            server_pid=r.server_pid,
            created_at=iso(r.created_at),
            updated_at=iso(r.updated_at),
            files=tuple(files),
            version=r.version,
            limits=dict(r.limits or {}),
            run=r.run,
            min_devices=r.min_devices,
            start_deadline_s=r.start_deadline_s,
            kind=TaskKind(r.kind),
        )

    def _one_task(self, conn: Connection, task_id: str) -> Task:
        found = self._load_tasks(conn, schema.tasks.c.task_id == task_id)
        if not found:
            raise not_found(f"task {task_id!r} not found")
        return found[0]

    @staticmethod
    def _replace_tags(conn: Connection, task_id: str, tags: Sequence[str]) -> None:
        conn.execute(delete(schema.task_tags).where(schema.task_tags.c.task_id == task_id))
        if tags:
            conn.execute(
                insert(schema.task_tags),
                [{"task_id": task_id, "tag": tag, "position": i} for i, tag in enumerate(tags)],
            )

    @staticmethod
    def _replace_files(conn: Connection, task_id: str, files: Sequence[BundleFile]) -> None:
        conn.execute(delete(schema.task_files).where(schema.task_files.c.task_id == task_id))
        if files:
            conn.execute(
                insert(schema.task_files),
                [
                    {"task_id": task_id, "name": f.name, "size": f.size, "sha256": f.sha256}
                    for f in files
                ],
            )

    def create_task(self, task: NewTask) -> Task:
        task_id = validation.ident("task_id", task.task_id)
        row = {
            "task_id": task_id,
            "host": validation.ident("host", task.host),
            "port": validation.integer("port", task.port, 1, 65535),
            "username": validation.text("username", task.username, validation.MAX_ID),
            "password": hash_password(validation.text("password", task.password)),
            "selection_criteria": validation.text("selection_criteria", task.selection_criteria),
            "server_arguments": list(validation.strings("server_arguments", task.server_arguments)),
            "client_arguments": list(validation.strings("client_arguments", task.client_arguments)),
            "limits": _limits(task.limits),
            "min_devices": validation.integer(
                "min_devices", task.min_devices, 0, validation.INT32_MAX
            ),
            "start_deadline_s": _deadline(task.start_deadline_s),
            "kind": _kind(task.kind),
        }
        tags, files = validation.unique("tag", task.tags), validation.files(task.files)
        now = utc_now()
        with self._tx(
            "create_task", write=True, conflict=f"task {task_id!r} already exists"
        ) as conn:
            conn.execute(
                insert(schema.tasks).values(
                    **row,
                    running=False,
                    state=TaskState.STOPPED.value,
                    state_reason="",
                    server_pid=None,
                    version=1,
                    log_seq=0,
                    created_at=now,
                    updated_at=now,
                )
            )
            self._replace_tags(conn, task_id, tags)
            self._replace_files(conn, task_id, files)
            return self._one_task(conn, task_id)

    def get_task(self, task_id: str) -> Task:
        with self._tx("get_task") as conn:
            return self._one_task(conn, task_id)

    def list_tasks(self, running: bool | None = None) -> list[Task]:
        where = true() if running is None else schema.tasks.c.running == running
        with self._tx("list_tasks") as conn:
            return self._load_tasks(conn, where)

    def list_running_tasks(self) -> list[Task]:
        return self.list_tasks(running=True)

    def update_task(
        self,
        task_id: str,
        *,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        selection_criteria: str | None = None,
        server_arguments: Sequence[str] | None = None,
        client_arguments: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
        limits: Mapping[str, Any] | None = None,
        min_devices: int | None = None,
        start_deadline_s: float | None = None,
        kind: TaskKind | str | None = None,
    ) -> Task:
        changes: dict[str, Any] = {}
        if min_devices is not None:
            changes["min_devices"] = validation.integer(
                "min_devices", min_devices, 0, validation.INT32_MAX
            )
        if start_deadline_s is not None:
            changes["start_deadline_s"] = _deadline(start_deadline_s or None)
        if limits is not None:
            changes["limits"] = _limits(limits)
        if kind is not None:
            changes["kind"] = _kind(kind)
        if host is not None:
            changes["host"] = validation.ident("host", host)
        if port is not None:
            changes["port"] = validation.integer("port", port, 1, 65535)
        if username is not None:
            changes["username"] = validation.text("username", username, validation.MAX_ID)
        if password is not None:
            changes["password"] = hash_password(validation.text("password", password))
        if selection_criteria is not None:
            changes["selection_criteria"] = validation.text(
                "selection_criteria", selection_criteria
            )
        if server_arguments is not None:
            changes["server_arguments"] = list(
                validation.strings("server_arguments", server_arguments)
            )
        if client_arguments is not None:
            changes["client_arguments"] = list(
                validation.strings("client_arguments", client_arguments)
            )
        new_tags = None if tags is None else validation.unique("tag", tags)
        with self._tx("update_task", write=True) as conn:
            if changes or new_tags is not None:
                found = conn.execute(
                    update(schema.tasks)
                    .where(schema.tasks.c.task_id == task_id)
                    .values(**changes, updated_at=utc_now())
                    .returning(schema.tasks.c.task_id)
                ).first()
                if found is None:
                    raise not_found(f"task {task_id!r} not found")
                if new_tags is not None:
                    self._replace_tags(conn, task_id, new_tags)
            return self._one_task(conn, task_id)

    def set_task_state(
        self,
        task_id: str,
        *,
        running: bool,
        state: TaskState | str,
        reason: str = "",
        server_pid: int | None = None,
        expected_running: bool | None = None,
    ) -> Task:
        parsed = validation.task_state(running, state)
        reason = validation.text("reason", reason)
        if server_pid is not None:
            validation.integer("server_pid", server_pid, 0)
        where = [schema.tasks.c.task_id == task_id]
        if expected_running is not None:
            where.append(schema.tasks.c.running == bool(expected_running))
            if not expected_running:
                where.append(schema.tasks.c.state != TaskState.QUEUED.value)
        with self._tx("set_task_state", write=True) as conn:
            found = conn.execute(
                update(schema.tasks)
                .where(*where)
                .values(
                    running=running,
                    state=parsed.value,
                    state_reason=reason,
                    server_pid=server_pid,
                    updated_at=utc_now(),
                )
                .returning(schema.tasks.c.task_id)
            ).first()
            if found is None:
                exists = conn.execute(
                    select(schema.tasks.c.running).where(schema.tasks.c.task_id == task_id)
                ).first()
                if exists is None:
                    raise not_found(f"task {task_id!r} not found")
                now = "running" if exists.running else "not running"
                raise conflict(f"task {task_id!r} is {now}")
            end_current_run(conn, task_id, parsed.value, reason)
            return self._one_task(conn, task_id)

    def set_task_files(self, task_id: str, files: Sequence[BundleFile]) -> Task:
        checked = validation.files(files)
        with self._tx("set_task_files", write=True) as conn:
            found = conn.execute(
                update(schema.tasks)
                .where(schema.tasks.c.task_id == task_id)
                .values(version=schema.tasks.c.version + 1, updated_at=utc_now())
                .returning(schema.tasks.c.task_id)
            ).first()
            if found is None:
                raise not_found(f"task {task_id!r} not found")
            self._replace_files(conn, task_id, checked)
            return self._one_task(conn, task_id)

    def delete_task(self, task_id: str) -> None:
        with self._tx("delete_task", write=True) as conn:
            found = conn.execute(
                select(schema.tasks.c.running, schema.tasks.c.state)
                .where(schema.tasks.c.task_id == task_id)
                .with_for_update()
            ).first()
            if found is None:
                raise not_found(f"task {task_id!r} not found")
            if found.running or found.state == TaskState.QUEUED.value:
                now = "running" if found.running else "queued"
                raise conflict(f"task {task_id!r} is {now}: stop it before deleting it")
            for table in (
                schema.task_tags,
                schema.task_files,
                schema.metrics,
                schema.log_lines,
                schema.device_tasks,
                schema.run_devices,
                schema.run_artifacts,
                schema.runs,
            ):
                conn.execute(delete(table).where(table.c.task_id == task_id))
            conn.execute(delete(schema.tasks).where(schema.tasks.c.task_id == task_id))
        logger.info("task %s deleted", task_id)

    # -- devices -------------------------------------------------------------------------

    @staticmethod
    def _device(r: Row[Any], sensors: Iterable[str]) -> Device:
        return Device(
            user_id=r.user_id,
            data_qnt=r.data_qnt,
            avg_acc_contrib=r.avg_acc_contrib,
            avg_disconnection_per_round=r.avg_disconnection_per_round,
            sensors=frozenset(sensors),
            extra=dict(r.extra),
            credential_hash=r.credential_hash,
            last_seen=iso(r.last_seen),
            created_at=iso(r.created_at),
            revoked_at=iso(r.revoked_at),
        )

    def _one_device(self, conn: Connection, user_id: str) -> Device:
        row = conn.execute(
            select(schema.devices).where(schema.devices.c.user_id == user_id)
        ).first()
        if row is None:
            raise not_found(f"device {user_id!r} not found")
        sensors = conn.execute(
            select(schema.device_sensors.c.sensor).where(schema.device_sensors.c.user_id == user_id)
        ).scalars()
        return self._device(row, sensors)

    def upsert_device(
        self,
        user_id: str,
        *,
        data_qnt: float | None = None,
        avg_acc_contrib: float | None = None,
        avg_disconnection_per_round: float | None = None,
        sensors: Iterable[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Device:
        user_id = validation.ident("user_id", user_id)
        changes: dict[str, Any] = {
            name: validation.number(name, value)
            for name, value in (
                ("data_qnt", data_qnt),
                ("avg_acc_contrib", avg_acc_contrib),
                ("avg_disconnection_per_round", avg_disconnection_per_round),
            )
            if value is not None
        }
        if extra is not None:
            changes["extra"] = validation.json_object("extra", extra)
        indexed = [] if extra is None else indexed_attributes(user_id, changes["extra"])
        new_sensors = None if sensors is None else sorted(set(validation.unique("sensor", sensors)))
        now = utc_now()
        with self._tx("upsert_device", write=True) as conn:
            conn.execute(
                self._insert_ignore(
                    schema.devices,
                    ["user_id"],
                    {"user_id": user_id, "extra": {}, "last_seen": now, "created_at": now},
                )
            )
            conn.execute(
                update(schema.devices)
                .where(schema.devices.c.user_id == user_id)
                .values(**changes, last_seen=now)
            )
            if extra is not None:
                attributes = schema.device_attributes
                conn.execute(delete(attributes).where(attributes.c.user_id == user_id))
                if indexed:
                    conn.execute(insert(attributes), indexed)
            if new_sensors is not None:
                conn.execute(
                    delete(schema.device_sensors).where(schema.device_sensors.c.user_id == user_id)
                )
                if new_sensors:
                    conn.execute(
                        insert(schema.device_sensors),
                        [{"user_id": user_id, "sensor": s} for s in new_sensors],
                    )
            return self._one_device(conn, user_id)

    def get_device(self, user_id: str) -> Device:
        with self._tx("get_device") as conn:
            return self._one_device(conn, user_id)

    def list_devices(self) -> list[Device]:
        with self._tx("list_devices") as conn:
            rows = conn.execute(select(schema.devices).order_by(schema.devices.c.user_id)).all()
            sensors: dict[str, list[str]] = defaultdict(list)
            for s in conn.execute(select(schema.device_sensors)):
                sensors[s.user_id].append(s.sensor)
            return [self._device(r, sensors[r.user_id]) for r in rows]

    def query_devices(self, query: DeviceQuery) -> DevicePage:
        with self._tx("query_devices") as conn:
            return sql_device_query.query_devices(conn, query, self._device, self._device_task)

    def delete_device(self, user_id: str) -> None:
        with self._tx("delete_device", write=True) as conn:
            # Its sensors and task states go by the foreign keys' cascades.
            gone = conn.execute(delete(schema.devices).where(schema.devices.c.user_id == user_id))
            if not gone.rowcount:
                raise not_found(f"device {user_id!r} not found")

    def _update_device(self, operation: str, user_id: str, values: dict[str, Any]) -> None:
        with self._tx(operation, write=True) as conn:
            found = conn.execute(
                update(schema.devices)
                .where(schema.devices.c.user_id == user_id)
                .values(**values)
                .returning(schema.devices.c.user_id)
            ).first()
            if found is None:
                raise not_found(f"device {user_id!r} not found")

    def find_device_by_credential_hash(self, credential_hash: str) -> str | None:
        with self._tx("find_device_by_credential_hash") as conn:
            found = conn.execute(
                select(schema.devices.c.user_id).where(
                    schema.devices.c.credential_hash == credential_hash
                )
            ).first()
            return None if found is None else str(found.user_id)

    def touch_device(self, user_id: str) -> None:
        self._update_device("touch_device", user_id, {"last_seen": utc_now()})

    def touch_devices(self, user_ids: Iterable[str]) -> int:
        ids = sorted(set(user_ids))  # one order for every writer: no lock-order deadlocks
        now, updated = utc_now(), 0
        with self._tx("touch_devices", write=True) as conn:
            for start in range(0, len(ids), 500):  # well under any bound-parameter limit
                chunk = ids[start : start + 500]
                result = conn.execute(
                    update(schema.devices)
                    .where(schema.devices.c.user_id.in_(chunk))
                    .values(last_seen=now)
                )
                updated += result.rowcount or 0
        return updated

    def set_device_credential(self, user_id: str, credential_hash: str | None) -> None:
        if credential_hash is not None:
            validation.ident("credential_hash", credential_hash)
        revoked_at = utc_now() if credential_hash is None else None
        self._update_device(
            "set_device_credential",
            user_id,
            {"credential_hash": credential_hash, "revoked_at": revoked_at},
        )

    def claim_device_credential(self, user_id: str, credential_hash: str) -> bool:
        validation.ident("credential_hash", credential_hash)
        devices = schema.devices.c
        with self._tx("claim_device_credential", write=True) as conn:
            claimed = conn.execute(
                update(schema.devices)
                .where(devices.user_id == user_id, devices.credential_hash.is_(None))
                .values(credential_hash=credential_hash, revoked_at=None)
                .returning(devices.user_id)
            ).first()
            if claimed is not None:
                return True
            if conn.execute(select(devices.user_id).where(devices.user_id == user_id)).first():
                return False
            raise not_found(f"device {user_id!r} not found")

    @staticmethod
    def _device_task(r: Row[Any]) -> DeviceTaskState:
        return DeviceTaskState(
            user_id=r.user_id,
            task_id=r.task_id,
            status=DeviceTaskStatus(r.status),
            reason=r.reason,
            updated_at=iso(r.updated_at),
            quarantined_until=iso(r.quarantined_until),
        )

    def set_device_task_status(
        self,
        user_id: str,
        task_id: str,
        status: DeviceTaskStatus | str,
        reason: str = "",
        *,
        run: int | None = None,
        quarantined_until: float | None = None,
    ) -> DeviceTaskState:
        parsed = validation.device_status(status)
        reason = validation.text("reason", reason)
        now = utc_now()
        until = None
        if parsed is DeviceTaskStatus.QUARANTINED and quarantined_until is not None:
            seconds = validation.number("quarantined_until", quarantined_until)
            until = datetime.fromtimestamp(seconds, UTC)
        values: dict[str, Any] = {
            "user_id": user_id,
            "task_id": task_id,
            "status": parsed.value,
            "reason": reason,
            "updated_at": now,
            "quarantined_until": until,
        }
        if run is not None:
            run = run_number("run", run)
        try:
            with self._tx("set_device_task_status", write=True, conflict=_GONE) as conn:
                exists, current = current_run(conn, task_id)
                if not exists:
                    _require_device(conn, user_id)  # an unknown device is named first
                    raise not_found(f"task {task_id!r} not found")
                if run is not None and run != current:
                    # Another run's end: its part only; the task's status is the current's.
                    require_run(conn, task_id, run)
                    _require_device(conn, user_id)  # no key of run_devices says so
                    record_participation(conn, task_id, run, user_id, parsed.value, reason)
                    return DeviceTaskState(user_id, task_id, parsed, reason, iso(now))
                if current is not None:
                    record_participation(conn, task_id, current, user_id, parsed.value, reason)
                # An unknown device is refused here, by the foreign key (no check before).
                upsert = self._upsert(schema.device_tasks, ["user_id", "task_id"], values)
                row = conn.execute(upsert.returning(*schema.device_tasks.c)).one()
                return self._device_task(row)
        except AgataError as exc:
            if exc.code is not ErrorCode.CONFLICT:
                raise
            refused = exc
        # A foreign key refused the row: say which id is unknown (else it was a race).
        with self._tx("set_device_task_status") as conn:
            _require_device(conn, user_id)
            if not _exists(conn, schema.tasks.c.task_id, task_id):
                raise not_found(f"task {task_id!r} not found")
        raise refused

    def list_device_tasks(self, user_id: str) -> list[DeviceTaskState]:
        dt = schema.device_tasks
        with self._tx("list_device_tasks") as conn:
            rows = conn.execute(select(dt).where(dt.c.user_id == user_id).order_by(dt.c.task_id))
            return [self._device_task(r) for r in rows]

    def list_task_devices(self, task_id: str) -> list[DeviceTaskState]:
        dt = schema.device_tasks
        with self._tx("list_task_devices") as conn:
            rows = conn.execute(select(dt).where(dt.c.task_id == task_id).order_by(dt.c.user_id))
            return [self._device_task(r) for r in rows]

    def device_task_states(
        self, user_ids: Sequence[str] | None = None
    ) -> dict[str, list[DeviceTaskState]]:
        dt = schema.device_tasks
        query = select(dt).order_by(dt.c.user_id, dt.c.task_id)
        if user_ids is not None:
            wanted = list(dict.fromkeys(user_ids))
            if not wanted:
                return {}
            query = query.where(dt.c.user_id.in_(wanted))
        states: dict[str, list[DeviceTaskState]] = defaultdict(list)
        with self._tx("device_task_states") as conn:
            for r in conn.execute(query):
                states[r.user_id].append(self._device_task(r))
        return dict(states)

    def list_device_failures(self, limit: int = 10) -> list[DeviceTaskState]:
        dt = schema.device_tasks
        failing = (DeviceTaskStatus.FAILED.value, DeviceTaskStatus.QUARANTINED.value)
        with self._tx("list_device_failures") as conn:
            rows = conn.execute(
                select(dt)
                .where(dt.c.status.in_(failing))
                .order_by(dt.c.updated_at.desc(), dt.c.user_id, dt.c.task_id)
                .limit(max(limit, 0))
            )
            return [self._device_task(r) for r in rows]

    def clear_quarantine(self, user_id: str | None, task_id: str | None = None) -> int:
        dt = schema.device_tasks
        where = [dt.c.status == DeviceTaskStatus.QUARANTINED.value]
        if user_id is not None:
            where.append(dt.c.user_id == user_id)
        if task_id is not None:
            where.append(dt.c.task_id == task_id)
        with self._tx("clear_quarantine", write=True) as conn:
            return conn.execute(delete(dt).where(*where)).rowcount

    # -- events, metrics, logs -----------------------------------------------------------

    def add_event(
        self,
        *,
        service: str,
        function: str,
        event: str,
        time: float | None = None,
        task_id: str | None = None,
        user_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        run: int | None = None,
    ) -> Event:
        new = NewEvent(service, function, event, time, task_id, user_id, data, run)
        return self._add_events("add_event", [new])[0]

    def add_events(self, events: Sequence[NewEvent]) -> list[Event]:
        return self._add_events("add_events", events)

    def _add_events(self, operation: str, events: Sequence[NewEvent]) -> list[Event]:
        """Every event checked first, then one transaction: one read of the current runs
        of the tasks that need one and one multi-row ``INSERT … RETURNING``."""
        rows = [_event_values(new) for new in events]
        if not rows:
            return []
        with self._tx(operation, write=True) as conn:
            wanted = sorted(
                {r["task_id"] for r in rows if r["run"] is None and r["task_id"] is not None}
            )
            runs: dict[str, int | None] = {}
            t = schema.tasks.c
            for start in range(0, len(wanted), 500):  # well under any bound-parameter limit
                found = select(t.task_id, t.run).where(t.task_id.in_(wanted[start : start + 500]))
                runs.update((r.task_id, r.run) for r in conn.execute(found))
            for r in rows:
                if r["run"] is None and r["task_id"] is not None:
                    r["run"] = runs.get(r["task_id"])
            e = schema.events
            ids = conn.execute(
                insert(e).returning(e.c.id, sort_by_parameter_order=True), rows
            ).scalars()
            return [Event(id=new_id, **r) for new_id, r in zip(ids, rows, strict=True)]

    def list_events(
        self,
        task_id: str | None = None,
        since: float | None = None,
        limit: int = 1000,
        *,
        run: int | None = None,
    ) -> list[Event]:
        limit = min(validation.integer("limit", limit, 1), MAX_LIST)
        e = schema.events
        query = select(e).order_by(e.c.time, e.c.id).limit(limit)
        if task_id is not None:
            query = query.where(e.c.task_id == task_id)
            if run is not None:
                query = query.where(or_(e.c.run == run_number("run", run), e.c.run.is_(None)))
        if since is not None:
            query = query.where(e.c.time >= validation.number("since", since))
        with self._tx("list_events") as conn:
            return [
                Event(
                    id=r.id,
                    time=r.time,
                    service=r.service,
                    function=r.function,
                    event=r.event,
                    task_id=r.task_id,
                    user_id=r.user_id,
                    data=dict(r.data),
                    run=r.run,
                )
                for r in conn.execute(query)
            ]

    def add_metric(
        self,
        task_id: str,
        round: int,
        source: str,
        metrics: Mapping[str, float],
        time: float | None = None,
        *,
        run: int | None = None,
    ) -> Metric:
        values: dict[str, Any] = {
            "task_id": task_id,
            "round": validation.integer("round", round, 0, validation.INT32_MAX),
            "source": validation.ident("source", source),
            "metrics": validation.metrics(metrics),
            "time": _time.time() if time is None else validation.number("time", time),
        }
        if run is not None:
            run = run_number("run", run)
        with self._tx("add_metric", write=True, conflict=_GONE) as conn:
            exists, current = current_run(conn, task_id)
            if not exists:
                raise not_found(f"task {task_id!r} not found")
            if run is not None and run != current:
                require_run(conn, task_id, run)
            values["run"] = current if run is None else run
            new_id = conn.execute(
                insert(schema.metrics).values(**values).returning(schema.metrics.c.id)
            )
            if values["run"] is not None:
                record_metric_in_run(
                    conn,
                    task_id,
                    values["run"],
                    values["round"],
                    values["source"],
                    values["metrics"],
                )
            return Metric(id=new_id.scalar_one(), **values)

    def list_metrics(self, task_id: str, *, run: int | None = None) -> list[Metric]:
        m = schema.metrics
        with self._tx("list_metrics") as conn:
            if run is None:
                run = current_run(conn, task_id)[1]
            in_run = m.c.run.is_(None) if run is None else m.c.run == run
            query = select(m).where(m.c.task_id == task_id, in_run).order_by(m.c.round, m.c.id)
            return [
                Metric(
                    id=r.id,
                    task_id=r.task_id,
                    round=r.round,
                    source=r.source,
                    metrics=dict(r.metrics),
                    time=r.time,
                    run=r.run,
                )
                for r in conn.execute(query)
            ]

    def task_progress(self, task_ids: Sequence[str]) -> dict[str, TaskProgress]:
        wanted = list(dict.fromkeys(task_ids))
        if not wanted:
            return {}
        t, r, a, dt = schema.tasks, schema.runs, schema.run_artifacts, schema.device_tasks
        current = (r.c.task_id == t.c.task_id) & (r.c.run == t.c.run)
        runs = select(r).join(t, current).where(t.c.task_id.in_(wanted))
        artifacts = (
            select(a)
            .join(t, (a.c.task_id == t.c.task_id) & (a.c.run == t.c.run))
            .where(t.c.task_id.in_(wanted))
            .order_by(a.c.task_id, a.c.name)
        )
        running = (
            select(dt.c.task_id, dt.c.user_id)
            .where(dt.c.task_id.in_(wanted), dt.c.status == DeviceTaskStatus.RUNNING.value)
            .order_by(dt.c.user_id)
        )
        found: dict[str, Any] = {}
        kept: dict[str, list[Artifact]] = defaultdict(list)
        devices: dict[str, list[str]] = defaultdict(list)
        with self._tx("task_progress") as conn:
            for row in conn.execute(runs):
                found[row.task_id] = row
            for row in conn.execute(artifacts):
                kept[row.task_id].append(_artifact(row))
            for row in conn.execute(running):
                devices[row.task_id].append(row.user_id)
        return {
            task_id: TaskProgress(
                task_id,
                run=_run(found[task_id], kept.get(task_id, ())) if task_id in found else None,
                devices_running=tuple(devices.get(task_id, ())),
            )
            for task_id in wanted
        }

    def add_log_lines(
        self, task_id: str, lines: Sequence[NewLogLine], *, run: int | None = None
    ) -> int:
        now = _time.time()
        rows = [
            {
                "source": validation.text("log source", line.source, validation.MAX_ID),
                "stream": validation.text("log stream", line.stream, validation.MAX_ID),
                "text": _log_text(line.text),
                "time": now if line.time is None else validation.number("log time", line.time),
            }
            for line in lines
        ]
        cap = self._log_cap
        lg = schema.log_lines
        if run is not None:
            run = run_number("run", run)
        with self._tx("add_log_lines", write=True) as conn:
            found = conn.execute(
                update(schema.tasks)
                .where(schema.tasks.c.task_id == task_id)
                .values(log_seq=schema.tasks.c.log_seq + len(rows))
                .returning(schema.tasks.c.log_seq, schema.tasks.c.run)
            ).first()
            if found is None:
                raise not_found(f"task {task_id!r} not found")
            last = found.log_seq
            if run is None:
                run = found.run
            elif run != found.run:
                require_run(conn, task_id, run)
            if rows:
                first = last - len(rows) + 1
                kept = [
                    {"task_id": task_id, "seq": first + i, "run": run, **row}
                    for i, row in enumerate(rows)
                    if first + i > last - cap
                ]
                conn.execute(insert(lg), kept)
                conn.execute(delete(lg).where(lg.c.task_id == task_id, lg.c.seq <= last - cap))
            return int(last)

    def tail_logs(
        self, task_id: str, n: int = 100, after_seq: int = 0, *, run: int | None = None
    ) -> list[LogLine]:
        n = validation.integer("n", n, 0)
        after_seq = validation.integer("after_seq", after_seq, 0)
        lg = schema.log_lines
        with self._tx("tail_logs") as conn:
            if run is None:
                run = current_run(conn, task_id)[1]
            in_run = lg.c.run.is_(None) if run is None else lg.c.run == run
            query = (
                select(lg)
                .where(lg.c.task_id == task_id, in_run, lg.c.seq > after_seq)
                .order_by(lg.c.seq.desc())
                .limit(min(n, self._log_cap))
            )
            rows = conn.execute(query).all() if n else []
        return [
            LogLine(
                task_id=r.task_id,
                seq=r.seq,
                source=r.source,
                stream=r.stream,
                text=r.text,
                time=r.time,
                run=r.run,
            )
            for r in reversed(rows)
        ]

    # -- tokens --------------------------------------------------------------------------

    @staticmethod
    def _operator_token(r: Row[Any]) -> OperatorToken:
        return OperatorToken(
            token_id=r.token_id,
            name=r.name,
            token_hash=r.token_hash,
            created_at=iso(r.created_at),
            revoked=bool(r.revoked),
        )

    @staticmethod
    def _enrollment_token(r: Row[Any]) -> EnrollmentToken:
        return EnrollmentToken(
            token_id=r.token_id,
            name=r.name,
            token_hash=r.token_hash,
            created_at=iso(r.created_at),
            expires_at=iso(r.expires_at),
            uses_left=r.uses_left,
            revoked=bool(r.revoked),
        )

    def add_operator_token(self, name: str, token_hash: str) -> OperatorToken:
        values: dict[str, Any] = {
            "token_id": uuid.uuid4().hex,
            "name": validation.text("name", name, validation.MAX_ID),
            "token_hash": validation.ident("token_hash", token_hash),
            "created_at": utc_now(),
            "revoked": False,
        }
        with self._tx(
            "add_operator_token", write=True, conflict="an operator token with this hash exists"
        ) as conn:
            conn.execute(insert(schema.operator_tokens).values(**values))
        logger.info("operator token %s (%s) added", values["token_id"], values["name"])
        return OperatorToken(**{**values, "created_at": iso(values["created_at"])})

    def find_operator_token_by_hash(self, token_hash: str) -> OperatorToken | None:
        ot = schema.operator_tokens
        with self._tx("find_operator_token_by_hash") as conn:
            row = conn.execute(
                select(ot).where(ot.c.token_hash == token_hash, ot.c.revoked == false())
            ).first()
        return None if row is None else self._operator_token(row)

    def list_operator_tokens(self) -> list[OperatorToken]:
        ot = schema.operator_tokens
        with self._tx("list_operator_tokens") as conn:
            rows = conn.execute(select(ot).order_by(ot.c.created_at, ot.c.token_id))
            return [self._operator_token(r) for r in rows]

    def _revoke(self, operation: str, table: Any, token_id: str) -> None:
        with self._tx(operation, write=True) as conn:
            found = conn.execute(
                update(table)
                .where(table.c.token_id == token_id)
                .values(revoked=True)
                .returning(table.c.token_id)
            ).first()
            if found is None:
                raise not_found(f"token {token_id!r} not found")
        logger.info("token %s revoked", token_id)

    def revoke_operator_token(self, token_id: str) -> None:
        self._revoke("revoke_operator_token", schema.operator_tokens, token_id)

    def add_enrollment_token(
        self, name: str, token_hash: str, *, uses: int = 1, expires_at: datetime | None = None
    ) -> EnrollmentToken:
        values: dict[str, Any] = {
            "token_id": uuid.uuid4().hex,
            "name": validation.text("name", name, validation.MAX_ID),
            "token_hash": validation.ident("token_hash", token_hash),
            "created_at": utc_now(),
            "expires_at": validation.aware("expires_at", expires_at),
            "uses_left": validation.integer("uses", uses, 1, validation.INT32_MAX),
            "revoked": False,
        }
        with self._tx(
            "add_enrollment_token", write=True, conflict="an enrollment token with this hash exists"
        ) as conn:
            conn.execute(insert(schema.enrollment_tokens).values(**values))
            row = conn.execute(
                select(schema.enrollment_tokens).where(
                    schema.enrollment_tokens.c.token_id == values["token_id"]
                )
            ).one()
        logger.info("enrollment token %s (%s) added", values["token_id"], values["name"])
        return self._enrollment_token(row)

    def consume_enrollment_token(self, token_hash: str) -> EnrollmentToken | None:
        et = schema.enrollment_tokens
        with self._tx("consume_enrollment_token", write=True) as conn:
            row = conn.execute(
                update(et)
                .where(
                    et.c.token_hash == token_hash,
                    et.c.revoked == false(),
                    et.c.uses_left > 0,
                    or_(et.c.expires_at.is_(None), et.c.expires_at > utc_now()),
                )
                .values(uses_left=et.c.uses_left - 1)
                .returning(*et.c)
            ).first()
        return None if row is None else self._enrollment_token(row)

    def list_enrollment_tokens(self) -> list[EnrollmentToken]:
        et = schema.enrollment_tokens
        with self._tx("list_enrollment_tokens") as conn:
            rows = conn.execute(select(et).order_by(et.c.created_at, et.c.token_id))
            return [self._enrollment_token(r) for r in rows]

    def revoke_enrollment_token(self, token_id: str) -> None:
        self._revoke("revoke_enrollment_token", schema.enrollment_tokens, token_id)


_LIMIT_NAMES = frozenset({"memory_mb", "cpu_cores", "open_files", "pids", "wall_seconds"})


def _event_values(new: NewEvent) -> dict[str, Any]:
    """An event's row, checked (``run`` None: its task's current run, filled in later)."""
    return {
        "time": _time.time() if new.time is None else validation.number("time", new.time),
        "service": validation.text("service", new.service, validation.MAX_ID),
        "function": validation.text("function", new.function, validation.MAX_ID),
        "event": validation.text("event", new.event, validation.MAX_ID),
        "task_id": None if new.task_id is None else validation.ident("task_id", new.task_id),
        "user_id": None if new.user_id is None else validation.ident("user_id", new.user_id),
        "data": validation.json_object("data", new.data),
        "run": None if new.run is None else run_number("run", new.run),
    }


def _limits(limits: Mapping[str, Any]) -> dict[str, Any] | None:
    """A task's limits as stored (None when there are none). Their bounds are the
    protocol's and the runtime's business; here: known names, numbers."""
    checked: dict[str, Any] = {}
    for name, value in limits.items():
        if name not in _LIMIT_NAMES:
            raise invalid(f"unknown limit {name!r}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise invalid(f"limit {name} must be a positive number")
        checked[name] = value
    return checked or None


def _deadline(value: float | None) -> float | None:
    """A run's start deadline in seconds (``None``: none)."""
    if value is None:
        return None
    number = validation.number("start_deadline_s", value)
    if number <= 0:
        raise invalid("start_deadline_s must be a positive number of seconds")
    return number


def _kind(kind: TaskKind | str) -> str:
    """A task kind as stored: one of :class:`TaskKind`'s values."""
    try:
        return TaskKind(kind).value
    except ValueError:
        names = ", ".join(k.value for k in TaskKind)
        raise invalid(f"unknown task kind {kind!r} (one of: {names})") from None


def _add_task_limits(conn: Connection) -> None:
    """Schema 1 -> 2: tasks get their limits (NULL: none)."""
    conn.execute(sql_text("ALTER TABLE tasks ADD COLUMN limits JSON"))


def _hash_task_passwords(conn: Connection) -> None:
    """Schema 2 -> 3: task passwords kept in clear until version 2 are hashed."""
    rows = conn.execute(
        select(schema.tasks.c.task_id, schema.tasks.c.password).where(schema.tasks.c.password != "")
    ).all()
    for row in rows:
        conn.execute(
            update(schema.tasks)
            .where(schema.tasks.c.task_id == row.task_id)
            .values(password=hash_password(row.password))
        )
    if rows:
        logger.info("store: hashed the download passwords of %s tasks", len(rows))


def indexed_attributes(user_id: str, extra: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``device_attributes`` rows of a device's ``extra``: its strings (up to
    ``INDEXED_TEXT_MAX`` characters) and numbers (bools as 1/0; not lists or nulls,
    which no indexed filter compares)."""
    rows: list[dict[str, Any]] = []
    for name, value in extra.items():
        if len(name) > INDEXED_NAME_MAX:
            continue
        if isinstance(value, str):
            if len(value) > INDEXED_TEXT_MAX:
                continue
            rows.append({"user_id": user_id, "name": name, "text_value": value, "num_value": None})
        elif isinstance(value, int | float):  # a bool as 1/0, as Python compares it
            rows.append(
                {"user_id": user_id, "name": name, "text_value": None, "num_value": float(value)}
            )
    return rows


def _add_device_queries(conn: Connection) -> None:
    """Schema 3 -> 4: devices remember a revocation; ``device_attributes`` (filled from
    every device's ``extra``, which ``create_all`` created empty); the query indexes."""
    if "revoked_at" not in {c["name"] for c in inspect(conn).get_columns("devices")}:
        conn.execute(sql_text("ALTER TABLE devices ADD COLUMN revoked_at TIMESTAMP WITH TIME ZONE"))
    for table in (schema.devices, schema.device_sensors, schema.device_tasks):
        for index in table.indexes:
            index.create(conn, checkfirst=True)
    conn.execute(delete(schema.device_attributes))
    for row in conn.execute(select(schema.devices.c.user_id, schema.devices.c.extra)).all():
        rows = indexed_attributes(row.user_id, row.extra or {})
        if rows:
            conn.execute(insert(schema.device_attributes), rows)


def _add_task_kind(conn: Connection) -> None:
    """Schema 4 -> 5: tasks get their kind; every task before it is a script task.
    (A table that ``create_all`` made at this version already has the column.)"""
    if "kind" not in {c["name"] for c in inspect(conn).get_columns("tasks")}:
        conn.execute(
            sql_text("ALTER TABLE tasks ADD COLUMN kind VARCHAR(16) NOT NULL DEFAULT 'script'")
        )


def _add_quarantine_expiry(conn: Connection) -> None:
    """Schema 6 -> 7: a device's quarantine of a task gets its expiry (unknown for the
    quarantines recorded before). (A table ``create_all`` made at this version already
    has the column.)"""
    if "quarantined_until" not in {c["name"] for c in inspect(conn).get_columns("device_tasks")}:
        kind = schema.device_tasks.c.quarantined_until.type.compile(dialect=conn.dialect)
        conn.execute(sql_text(f"ALTER TABLE device_tasks ADD COLUMN quarantined_until {kind}"))
