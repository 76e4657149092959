"""What only SQLite files do: WAL, locks held by other connections, full disks, reopening."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, update

from agata.errors import AgataError, ErrorCode
from agata.store import NewLogLine, NewTask, create_store
from agata.store import sql_schema as schema
from agata.store.passwords import verify_password
from agata.store.sql_store import SqlStore
from agata.store.store import TaskKind


def _task(task_id: str = "t1") -> NewTask:
    return NewTask(task_id=task_id, host="h", port=1, username="u", password="secret-pw")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sub" / "agata.db"


@pytest.fixture
def writer(db_path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's connection to the same file, holding a write transaction."""
    create_store(f"sqlite:///{db_path}").close()
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO events (time, service, function, event, data) VALUES (0, 's', 'f', 'e', '{}')"
    )
    yield conn
    conn.execute("ROLLBACK")
    conn.close()


def test_file_uses_wal_and_foreign_keys(db_path: Path) -> None:
    store = create_store(f"sqlite:///{db_path}")
    assert isinstance(store, SqlStore)

    with store.engine.connect() as conn:
        journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        foreign_keys = conn.exec_driver_sql("PRAGMA foreign_keys").scalar()
    store.close()

    assert journal == "wal" and foreign_keys == 1
    assert db_path.parent.is_dir()


def test_data_survives_reopening(db_path: Path) -> None:
    with create_store(f"sqlite:///{db_path}") as first:
        first.create_task(_task())

    with create_store(f"sqlite:///{db_path}") as second:
        assert verify_password("secret-pw", second.get_task("t1").password_hash)


def test_write_locked_by_another_connection_fails_fast_with_unavailable(
    db_path: Path, writer: sqlite3.Connection
) -> None:
    create_store_url = f"sqlite:///{db_path}"
    # Opening also writes (schema check) and must fail the same way, not hang.
    with pytest.raises(AgataError) as opening:
        create_store(create_store_url, busy_timeout=0.2)
    writer.execute("ROLLBACK")
    store = create_store(create_store_url, busy_timeout=0.2)
    store.create_task(_task())
    writer.execute("BEGIN IMMEDIATE")
    started = time.monotonic()

    with pytest.raises(AgataError) as exc:
        store.update_task("t1", host="h2")

    waited = time.monotonic() - started
    assert opening.value.code is ErrorCode.UNAVAILABLE
    assert exc.value.code is ErrorCode.UNAVAILABLE
    assert "locked by another connection" in exc.value.message
    assert "0.2 s" in exc.value.message
    assert "UPDATE" not in exc.value.message and "tasks" not in exc.value.message
    assert 0.15 <= waited < 3.0
    assert store.get_task("t1").host == "h"  # WAL: readers are not blocked by the writer
    store.close()


def test_store_works_again_once_the_lock_is_released(
    db_path: Path, writer: sqlite3.Connection
) -> None:
    writer.execute("ROLLBACK")
    store = create_store(f"sqlite:///{db_path}", busy_timeout=0.2)
    writer.execute("BEGIN IMMEDIATE")
    with pytest.raises(AgataError):
        store.create_task(_task())

    writer.execute("ROLLBACK")
    store.create_task(_task())
    writer.execute("BEGIN")  # the fixture's teardown rolls back

    assert store.get_task("t1").task_id == "t1"
    store.close()


def test_a_write_of_this_process_waits_its_turn_without_sqlites_busy_handler(
    db_path: Path,
) -> None:
    # Prepare: a thread of this process holds a write transaction open (its first
    # statement after BEGIN IMMEDIATE waits); count the write transactions begun and
    # not yet ended
    store = create_store(f"sqlite:///{db_path}", busy_timeout=5.0)
    assert isinstance(store, SqlStore)
    store.create_task(_task())
    holding, release = threading.Event(), threading.Event()
    open_writes: list[int] = [0]
    most_open: list[int] = [0]

    @event.listens_for(store.engine, "before_cursor_execute")
    def watch(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.startswith("BEGIN IMMEDIATE"):
            open_writes[0] += 1
            most_open[0] = max(most_open[0], open_writes[0])
        elif threading.current_thread().name == "holder" and not statement.startswith("BEGIN"):
            holding.set()
            release.wait(30)

    @event.listens_for(store.engine, "commit")
    @event.listens_for(store.engine, "rollback")
    def ended(_conn: object) -> None:
        open_writes[0] = max(0, open_writes[0] - 1)

    holder = threading.Thread(
        target=store.update_task, args=("t1",), kwargs={"host": "h1"}, name="holder"
    )
    holder.start()
    assert holding.wait(30)
    outcome: list[object] = []

    def write() -> None:
        try:
            outcome.append(store.update_task("t1", port=2))
        except AgataError as exc:
            outcome.append(exc)

    # Execute: another thread's write meets the open transaction (before, it began its
    # own and polled SQLite's lock in the busy handler, with sleeps of up to 100 ms)
    writer = threading.Thread(target=write)
    writer.start()
    writer.join(0.5)
    release.set()
    holder.join(30)
    writer.join(30)

    # Assert: it began only once the other had ended, and wrote
    assert most_open[0] == 1
    assert len(outcome) == 1 and not isinstance(outcome[0], AgataError), outcome
    task = store.get_task("t1")
    assert (task.host, task.port) == ("h1", 2)
    store.close()


def test_a_write_queued_behind_this_process_writers_gives_up_within_the_busy_timeout(
    db_path: Path,
) -> None:
    # Prepare: a write of this process waits for another process's write lock
    store = create_store(f"sqlite:///{db_path}", busy_timeout=1.0)
    store.create_task(_task())
    other = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    first = threading.Thread(target=lambda: _fails(store))
    first.start()

    # Execute: a second write queues behind the first
    started = time.monotonic()
    with pytest.raises(AgataError) as exc:
        store.update_task("t1", port=3)
    waited = time.monotonic() - started
    first.join(30)
    other.execute("ROLLBACK")
    other.close()

    # Assert: a clear refusal within about one busy timeout, not one per write ahead
    assert exc.value.code is ErrorCode.UNAVAILABLE
    assert "the database is locked" in exc.value.message
    assert waited < 1.9
    store.close()


def _fails(store: object) -> None:
    with pytest.raises(AgataError):
        store.update_task("t1", host="h2")  # type: ignore[attr-defined]


def test_full_database_is_unavailable_and_writes_nothing() -> None:
    store = create_store("sqlite://")
    assert isinstance(store, SqlStore)
    store.create_task(_task())
    with store.engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
        conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")

    with pytest.raises(AgataError) as exc:
        store.add_log_lines("t1", [NewLogLine("server", "stdout", "x" * 60_000)] * 20)

    assert exc.value.code is ErrorCode.UNAVAILABLE
    assert "full" in exc.value.message
    assert store.tail_logs("t1") == []
    store.close()


def test_newer_schema_version_is_refused(db_path: Path) -> None:
    store = create_store(f"sqlite:///{db_path}")
    assert isinstance(store, SqlStore)
    with store.engine.begin() as conn:
        conn.execute(update(schema.schema_version).values(version=schema.SCHEMA_VERSION + 1))
    store.close()

    with pytest.raises(AgataError) as exc:
        create_store(f"sqlite:///{db_path}")

    assert exc.value.code is ErrorCode.INTERNAL
    assert "upgrade AGATA" in exc.value.message


def test_a_version_1_database_gains_task_limits_and_keeps_its_rows(db_path: Path) -> None:
    # Prepare: a database as version 1 left it (no tasks.limits), with a task in it
    store = create_store(f"sqlite:///{db_path}")
    store.create_task(_task())
    store.close()
    raw = sqlite3.connect(db_path)
    raw.execute("ALTER TABLE tasks DROP COLUMN limits")
    raw.execute("ALTER TABLE tasks DROP COLUMN kind")  # since version 5
    raw.execute("UPDATE tasks SET password = 'secret-pw'")  # version 1 kept it in clear
    raw.execute("UPDATE schema_version SET version = 1")
    raw.commit()
    raw.close()

    # Execute
    store = create_store(f"sqlite:///{db_path}")

    # Assert: migrated; the old task has no limits, new values are kept
    assert store.get_task("t1").limits == {}
    assert store.update_task("t1", limits={"pids": 20}).limits == {"pids": 20}
    assert verify_password("secret-pw", store.get_task("t1").password_hash)
    store.close()
    raw = sqlite3.connect(db_path)
    assert raw.execute("SELECT version FROM schema_version").fetchone() == (schema.SCHEMA_VERSION,)
    assert raw.execute("SELECT password FROM tasks").fetchone()[0].startswith("scrypt$")
    raw.close()


def test_a_version_4_database_gains_task_kinds_and_its_tasks_are_scripts(db_path: Path) -> None:
    # Prepare: a database as version 4 left it (no tasks.kind), with a task in it
    store = create_store(f"sqlite:///{db_path}")
    store.create_task(_task())
    store.close()
    raw = sqlite3.connect(db_path)
    raw.execute("ALTER TABLE tasks DROP COLUMN kind")
    raw.execute("UPDATE schema_version SET version = 4")
    raw.commit()
    raw.close()

    # Execute
    store = create_store(f"sqlite:///{db_path}")

    # Assert: the old task is a script task; a kind can be set and is kept
    assert store.get_task("t1").kind is TaskKind.SCRIPT
    assert store.update_task("t1", kind="flower-app").kind is TaskKind.FLOWER_APP
    store.close()
    assert create_store(f"sqlite:///{db_path}").get_task("t1").kind is TaskKind.FLOWER_APP


def test_a_version_6_database_gains_quarantine_expiries(db_path: Path) -> None:
    # Prepare: a database as version 6 left it (no device_tasks.quarantined_until)
    store = create_store(f"sqlite:///{db_path}")
    store.create_task(_task())
    store.upsert_device("d1")
    store.set_device_task_status("d1", "t1", "quarantined", "old")
    store.close()
    raw = sqlite3.connect(db_path)
    raw.execute("ALTER TABLE device_tasks DROP COLUMN quarantined_until")
    raw.execute("UPDATE schema_version SET version = 6")
    raw.commit()
    raw.close()

    # Execute
    store = create_store(f"sqlite:///{db_path}")

    # Assert: the old quarantine is kept (expiry unknown); a new one keeps its expiry
    [old] = store.list_device_tasks("d1")
    assert (old.reason, old.quarantined_until) == ("old", None)
    new = store.set_device_task_status("d1", "t1", "quarantined", quarantined_until=2e9)
    assert new.quarantined_until is not None
    store.close()


def test_an_unknown_task_kind_is_refused_with_the_known_ones(db_path: Path) -> None:
    store = create_store(f"sqlite:///{db_path}")
    store.create_task(_task())

    with pytest.raises(AgataError) as exc:
        store.update_task("t1", kind="docker")

    assert exc.value.code is ErrorCode.INVALID_ARGUMENT
    assert "docker" in exc.value.message and "flower-app" in exc.value.message
    assert store.get_task("t1").kind is TaskKind.SCRIPT
    store.close()


def test_task_limits_are_checked_by_the_store(db_path: Path) -> None:
    store = create_store(f"sqlite:///{db_path}")
    store.create_task(_task())

    for bad in ({"gpus": 1}, {"pids": -1}, {"memory_mb": "lots"}):
        with pytest.raises(AgataError) as exc:
            store.update_task("t1", limits=bad)
        assert exc.value.code is ErrorCode.INVALID_ARGUMENT
    assert store.get_task("t1").limits == {}
    store.close()
