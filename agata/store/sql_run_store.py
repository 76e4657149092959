"""The run methods of the SQL store (:class:`agata.store.run_store.RunStore` on SQL).

A mixin of :class:`agata.store.sql_store.SqlStore`: it uses that class's transactions
(``_tx``) and keeps the same conventions. Also here: the helpers the store's other
methods use to attach metrics, log lines, events and device reports to a run, and the
schema 5 -> 6 migration (existing data gets its runs).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, func, insert, inspect, select, update
from sqlalchemy import text as sql_text

from agata.errors import conflict, invalid, not_found
from agata.protocol.bundle_files import BundleFile
from agata.store import sql_schema as schema
from agata.store import validation
from agata.store.run_store import Artifact, Run, RunDevice, RunState, RunStore
from agata.store.sql_schema import iso, utc_now

logger = logging.getLogger(__name__)

#: Most runs one ``list_runs`` call returns.
MAX_RUNS_PAGE = 1000
#: Run states a run leaves only by ending.
ACTIVE = (RunState.QUEUED.value, RunState.WAITING.value, RunState.RUNNING.value)
#: The task states that end a run, and the run state each gives it.
RUN_ENDS = {
    "stopped": RunState.STOPPED.value,
    "finished": RunState.FINISHED.value,
    "failed": RunState.FAILED.value,
}


def run_number(name: str, value: int) -> int:
    """A run number as the store keeps it: a positive ``INTEGER``."""
    return validation.integer(name, value, 1, validation.INT32_MAX)


def current_run(conn: Connection, task_id: str) -> tuple[bool, int | None]:
    """Whether the task exists, and its current run (``None``: never started)."""
    row = conn.execute(select(schema.tasks.c.run).where(schema.tasks.c.task_id == task_id)).first()
    return (False, None) if row is None else (True, row.run)


def require_run(conn: Connection, task_id: str, run: int) -> None:
    """``NOT_FOUND`` unless the task has this run."""
    found = conn.execute(
        select(schema.runs.c.run).where(schema.runs.c.task_id == task_id, schema.runs.c.run == run)
    ).first()
    if found is None:
        if not conn.execute(
            select(schema.tasks.c.task_id).where(schema.tasks.c.task_id == task_id)
        ).first():
            raise not_found(f"task {task_id!r} not found")
        raise not_found(f"run {run} of task {task_id!r} not found")


def end_current_run(conn: Connection, task_id: str, task_state: str, reason: str) -> None:
    """End the task's current run, if active, as ``task_state`` says (an end state)."""
    state = RUN_ENDS.get(task_state)
    if state is None:
        return
    r = schema.runs.c
    conn.execute(
        update(schema.runs)
        .where(
            r.task_id == task_id,
            r.run
            == select(schema.tasks.c.run)
            .where(schema.tasks.c.task_id == task_id)
            .scalar_subquery(),
            r.state.in_(ACTIVE),
        )
        .values(state=state, reason=reason, ended_at=utc_now())
    )


def record_metric_in_run(
    conn: Connection, task_id: str, run: int, round: int, source: str, metrics: dict[str, Any]
) -> None:
    """Make these the run's last metrics (a device's only while none came from the server)
    and a device's round its part's last round."""
    r = schema.runs.c
    query = update(schema.runs).where(r.task_id == task_id, r.run == run)
    if source != "server":  # a server's metrics are the run's; a device's until then
        query = query.where(r.last_source.is_(None) | (r.last_source != "server"))
    conn.execute(query.values(last_round=round, last_metrics=metrics, last_source=source))
    if source != "server":
        d = schema.run_devices.c
        conn.execute(
            update(schema.run_devices)
            .where(d.task_id == task_id, d.run == run, d.user_id == source)
            .values(last_round=round)
        )


def record_participation(
    conn: Connection, task_id: str, run: int, user_id: str, status: str, reason: str
) -> None:
    """A device's report for a run: its part's status; a first ``running`` joins it."""
    d = schema.run_devices.c
    now = utc_now()
    joined = status == "running"
    existing = conn.execute(
        select(d.joined_at)
        .where(d.task_id == task_id, d.run == run, d.user_id == user_id)
        .with_for_update()
    ).first()
    if existing is None:
        conn.execute(
            insert(schema.run_devices).values(
                task_id=task_id,
                run=run,
                user_id=user_id,
                status=status,
                reason=reason,
                joined_at=now if joined else None,
                last_round=None,
                updated_at=now,
            )
        )
        newly = joined
    else:
        newly = joined and existing.joined_at is None
        values: dict[str, Any] = {"status": status, "reason": reason, "updated_at": now}
        if newly:
            values["joined_at"] = now
        conn.execute(
            update(schema.run_devices)
            .where(d.task_id == task_id, d.run == run, d.user_id == user_id)
            .values(**values)
        )
    if newly:
        conn.execute(
            update(schema.runs)
            .where(schema.runs.c.task_id == task_id, schema.runs.c.run == run)
            .values(devices_joined=schema.runs.c.devices_joined + 1)
        )


def _artifact(r: Row[Any]) -> Artifact:
    return Artifact(
        task_id=r.task_id,
        run=r.run,
        name=r.name,
        size=r.size,
        sha256=r.sha256,
        saved_at=iso(r.saved_at),
    )


def _run(r: Row[Any], artifacts: Iterable[Artifact] = ()) -> Run:
    return Run(
        task_id=r.task_id,
        run=r.run,
        state=RunState(r.state),
        reason=r.reason,
        server_arguments=tuple(r.server_arguments),
        client_arguments=tuple(r.client_arguments),
        bundle_version=r.bundle_version,
        files=tuple(BundleFile(str(name), int(size), str(sha)) for name, size, sha in r.files),
        min_devices=r.min_devices,
        start_deadline_s=r.start_deadline_s,
        created_at=iso(r.created_at),
        started_at=iso(r.started_at),
        ended_at=iso(r.ended_at),
        last_round=r.last_round,
        last_metrics=dict(r.last_metrics or {}),
        devices_joined=r.devices_joined,
        artifacts=tuple(artifacts),
    )


class SqlRunStore(RunStore):
    """Run methods on SQL; mixed into :class:`agata.store.sql_store.SqlStore`."""

    def _tx(
        self, operation: str, *, write: bool = False, conflict: str | None = None
    ) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # SqlStore's

    def create_run(
        self,
        task_id: str,
        *,
        state: RunState | str,
        server_arguments: Sequence[str],
        client_arguments: Sequence[str],
        reason: str = "",
    ) -> Run:
        parsed = validation.member("run state", RunState, state)
        if not parsed.active:
            raise invalid(f"a run starts queued, waiting or running, not {parsed.value}")
        server = list(validation.strings("server_arguments", server_arguments))
        client = list(validation.strings("client_arguments", client_arguments))
        reason = validation.text("reason", reason)
        tk = schema.tasks.c
        with self._tx(
            "create_run", write=True, conflict=f"task {task_id!r} was started at the same time"
        ) as conn:
            task = conn.execute(
                select(tk.running, tk.state, tk.version, tk.min_devices, tk.start_deadline_s)
                .where(tk.task_id == task_id)
                .with_for_update()
            ).first()
            if task is None:
                raise not_found(f"task {task_id!r} not found")
            if task.running or task.state == "queued":
                raise conflict(f"task {task_id!r} is already {task.state}")
            last = conn.execute(
                select(func.max(schema.runs.c.run)).where(schema.runs.c.task_id == task_id)
            ).scalar()
            number = int(last or 0) + 1
            files = [
                [f.name, f.size, f.sha256]
                for f in conn.execute(
                    select(schema.task_files)
                    .where(schema.task_files.c.task_id == task_id)
                    .order_by(schema.task_files.c.name)
                )
            ]
            now = utc_now()
            queued = parsed is RunState.QUEUED
            conn.execute(
                insert(schema.runs).values(
                    task_id=task_id,
                    run=number,
                    state=parsed.value,
                    reason=reason,
                    server_arguments=server,
                    client_arguments=client,
                    bundle_version=task.version,
                    files=files,
                    min_devices=task.min_devices,
                    start_deadline_s=task.start_deadline_s,
                    created_at=now,
                    started_at=None if queued else now,
                    ended_at=None,
                    last_round=None,
                    last_metrics=None,
                    last_source=None,
                    devices_joined=0,
                )
            )
            conn.execute(
                update(schema.tasks)
                .where(tk.task_id == task_id)
                .values(
                    run=number,
                    running=not queued,
                    state="queued" if queued else "running",
                    state_reason=reason if queued else "",
                    server_pid=None,
                    updated_at=now,
                )
            )
            return self._one_run(conn, task_id, number)

    def start_queued_run(self, task_id: str, run: int, *, state: RunState | str) -> Run:
        parsed = validation.member("run state", RunState, state)
        if parsed not in (RunState.WAITING, RunState.RUNNING):
            raise invalid(f"a queued run starts waiting or running, not {parsed.value}")
        run = run_number("run", run)
        tk, r = schema.tasks.c, schema.runs.c
        with self._tx("start_queued_run", write=True) as conn:
            task = conn.execute(
                select(tk.run, tk.state).where(tk.task_id == task_id).with_for_update()
            ).first()
            if task is None:
                raise not_found(f"task {task_id!r} not found")
            require_run(conn, task_id, run)
            now = utc_now()
            started = conn.execute(
                update(schema.runs)
                .where(r.task_id == task_id, r.run == run, r.state == RunState.QUEUED.value)
                .values(state=parsed.value, started_at=now, reason="")
            ).rowcount
            if not started or task.run != run or task.state != "queued":
                raise conflict(f"run {run} of task {task_id!r} is not queued")
            conn.execute(
                update(schema.tasks)
                .where(tk.task_id == task_id)
                .values(
                    running=True, state="running", state_reason="", server_pid=None, updated_at=now
                )
            )
            return self._one_run(conn, task_id, run)

    def set_run_waiting_done(self, task_id: str, run: int) -> Run:
        run = run_number("run", run)
        r = schema.runs.c
        with self._tx("set_run_waiting_done", write=True) as conn:
            done = conn.execute(
                update(schema.runs)
                .where(r.task_id == task_id, r.run == run, r.state == RunState.WAITING.value)
                .values(state=RunState.RUNNING.value, reason="")
            ).rowcount
            if not done:
                require_run(conn, task_id, run)
                raise conflict(f"run {run} of task {task_id!r} is not waiting")
            return self._one_run(conn, task_id, run)

    def _one_run(self, conn: Connection, task_id: str, run: int) -> Run:
        row = conn.execute(
            select(schema.runs).where(schema.runs.c.task_id == task_id, schema.runs.c.run == run)
        ).first()
        if row is None:
            require_run(conn, task_id, run)  # raises with the right words
            raise not_found(f"run {run} of task {task_id!r} not found")
        a = schema.run_artifacts.c
        artifacts = conn.execute(
            select(schema.run_artifacts).where(a.task_id == task_id, a.run == run).order_by(a.name)
        )
        return _run(row, (_artifact(x) for x in artifacts))

    def get_run(self, task_id: str, run: int) -> Run:
        run = run_number("run", run)
        with self._tx("get_run") as conn:
            return self._one_run(conn, task_id, run)

    def list_runs(self, task_id: str, *, limit: int = 50, before: int | None = None) -> list[Run]:
        limit = min(validation.integer("limit", limit, 1), MAX_RUNS_PAGE)
        r = schema.runs.c
        query = select(schema.runs).where(r.task_id == task_id)
        if before is not None:
            query = query.where(r.run < run_number("before", before))
        query = query.order_by(r.run.desc()).limit(limit)
        with self._tx("list_runs") as conn:
            rows = conn.execute(query).all()
            if not rows:
                return []
            a = schema.run_artifacts.c
            artifacts: dict[int, list[Artifact]] = defaultdict(list)
            for x in conn.execute(
                select(schema.run_artifacts)
                .where(a.task_id == task_id, a.run <= rows[0].run, a.run >= rows[-1].run)
                .order_by(a.run, a.name)
            ):
                artifacts[x.run].append(_artifact(x))
            return [_run(row, artifacts[row.run]) for row in rows]

    def list_queued_runs(self) -> list[Run]:
        r = schema.runs.c
        with self._tx("list_queued_runs") as conn:
            rows = conn.execute(
                select(schema.runs)
                .where(r.state == RunState.QUEUED.value)
                .order_by(r.created_at, r.task_id)
            ).all()
            return [_run(row) for row in rows]

    def count_started_runs(self) -> int:
        r = schema.runs.c
        started = (RunState.WAITING.value, RunState.RUNNING.value)
        with self._tx("count_started_runs") as conn:
            count = conn.execute(
                select(func.count()).select_from(schema.runs).where(r.state.in_(started))
            ).scalar()
            return int(count or 0)

    def list_run_devices(self, task_id: str, run: int) -> list[RunDevice]:
        d = schema.run_devices.c
        with self._tx("list_run_devices") as conn:
            rows = conn.execute(
                select(schema.run_devices)
                .where(d.task_id == task_id, d.run == run)
                .order_by(d.user_id)
            )
            return [
                RunDevice(
                    task_id=x.task_id,
                    run=x.run,
                    user_id=x.user_id,
                    status=x.status,
                    reason=x.reason,
                    joined_at=iso(x.joined_at),
                    last_round=x.last_round,
                    updated_at=iso(x.updated_at),
                )
                for x in rows
            ]

    def add_artifact(self, task_id: str, run: int, name: str, size: int, sha256: str) -> Artifact:
        run = run_number("run", run)
        values: dict[str, Any] = {
            "task_id": task_id,
            "run": run,
            "name": validation.text("artifact name", name, validation.MAX_ID),
            "size": validation.integer("size", size, 0),
            "sha256": validation.ident("sha256", sha256),
            "saved_at": utc_now(),
        }
        a = schema.run_artifacts.c
        with self._tx("add_artifact", write=True) as conn:
            require_run(conn, task_id, run)
            where = (a.task_id == task_id, a.run == run, a.name == values["name"])
            if conn.execute(select(a.name).where(*where)).first() is None:
                conn.execute(insert(schema.run_artifacts).values(**values))
            else:
                conn.execute(update(schema.run_artifacts).where(*where).values(**values))
            return _artifact(conn.execute(select(schema.run_artifacts).where(*where)).one())

    def get_artifact(self, task_id: str, run: int, name: str) -> Artifact:
        run = run_number("run", run)
        a = schema.run_artifacts.c
        with self._tx("get_artifact") as conn:
            row = conn.execute(
                select(schema.run_artifacts).where(
                    a.task_id == task_id, a.run == run, a.name == name
                )
            ).first()
            if row is None:
                require_run(conn, task_id, run)
                raise not_found(f"artifact {name!r} of run {run} of task {task_id!r} not found")
            return _artifact(row)


def add_runs(conn: Connection) -> None:
    """Schema 5 -> 6: tasks remember their current run and scheduling; metrics, log
    lines and events carry a run; the runs tables (``create_all`` made them). A task
    that has metrics (or is running) gets run 1, holding all of its metrics, log lines,
    events and device states."""
    columns = {
        "tasks": [
            ("run", "INTEGER"),
            ("min_devices", "INTEGER NOT NULL DEFAULT 0"),
            ("start_deadline_s", "DOUBLE PRECISION"),
        ],
        "metrics": [("run", "INTEGER")],
        "log_lines": [("run", "INTEGER")],
        "events": [("run", "INTEGER")],
    }
    inspector = inspect(conn)
    for table, added in columns.items():
        have = {c["name"] for c in inspector.get_columns(table)}
        for name, kind in added:
            if name not in have:
                conn.execute(sql_text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))
    for indexed in (schema.metrics, schema.log_lines, schema.events, schema.runs):
        for index in indexed.indexes:
            index.create(conn, checkfirst=True)
    with_metrics = set(conn.execute(select(schema.metrics.c.task_id).distinct()).scalars())
    running = set(
        conn.execute(select(schema.tasks.c.task_id).where(schema.tasks.c.running)).scalars()
    )
    have_runs = set(conn.execute(select(schema.runs.c.task_id).distinct()).scalars())
    migrated = sorted((with_metrics | running) - have_runs)
    for task_id in migrated:
        _first_run(conn, task_id)
    if migrated:
        logger.info("store: %d task(s) got run 1 for their existing records", len(migrated))


def _first_run(conn: Connection, task_id: str) -> None:
    task = conn.execute(select(schema.tasks).where(schema.tasks.c.task_id == task_id)).one()
    m = schema.metrics.c
    times = conn.execute(
        select(func.min(m.time), func.max(m.time)).where(m.task_id == task_id)
    ).one()
    last = conn.execute(
        select(m.round, m.metrics, m.source)
        .where(m.task_id == task_id)
        .order_by((m.source == "server").desc(), m.round.desc(), m.id.desc())
        .limit(1)
    ).first()
    files = [
        [f.name, f.size, f.sha256]
        for f in conn.execute(
            select(schema.task_files)
            .where(schema.task_files.c.task_id == task_id)
            .order_by(schema.task_files.c.name)
        )
    ]

    def stamp(seconds: float | None, default: datetime) -> datetime:
        return default if seconds is None else datetime.fromtimestamp(seconds, UTC)

    started = stamp(times[0], task.created_at)
    state = "running" if task.running else RUN_ENDS.get(task.state, RunState.STOPPED.value)
    conn.execute(
        insert(schema.runs).values(
            task_id=task_id,
            run=1,
            state=state,
            reason=task.state_reason,
            server_arguments=list(task.server_arguments),
            client_arguments=list(task.client_arguments),
            bundle_version=task.version,
            files=files,
            min_devices=0,
            start_deadline_s=None,
            created_at=started,
            started_at=started,
            ended_at=None if task.running else stamp(times[1], task.updated_at),
            last_round=None if last is None else last.round,
            last_metrics=None if last is None else last.metrics,
            last_source=None if last is None else last.source,
            devices_joined=0,
        )
    )
    conn.execute(update(schema.tasks).where(schema.tasks.c.task_id == task_id).values(run=1))
    for table in (schema.metrics, schema.log_lines, schema.events):
        conn.execute(update(table).where(table.c.task_id == task_id).values(run=1))
    joined = 0
    for state_row in conn.execute(
        select(schema.device_tasks).where(schema.device_tasks.c.task_id == task_id)
    ).all():
        ran = state_row.status != "downloading"
        joined += ran
        conn.execute(
            insert(schema.run_devices).values(
                task_id=task_id,
                run=1,
                user_id=state_row.user_id,
                status=state_row.status,
                reason=state_row.reason,
                joined_at=state_row.updated_at if ran else None,
                last_round=None,
                updated_at=state_row.updated_at,
            )
        )
    if joined:
        conn.execute(
            update(schema.runs)
            .where(schema.runs.c.task_id == task_id, schema.runs.c.run == 1)
            .values(devices_joined=joined)
        )
