"""Runs in the store, on every backend: numbering, claims, what belongs to a run, the
queue, artifacts, costs that do not grow with the runs, and the schema 5 -> 6 migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from agata.errors import AgataError, ErrorCode
from agata.store import BundleFile, NewLogLine, NewTask, Store, TaskState, create_store
from agata.store import sql_schema as schema
from agata.store.run_store import RunState
from agata.store.sql_store import SqlStore


def _task(store: Store, task_id: str = "t1", **fields: Any) -> None:
    store.create_task(
        NewTask(
            task_id=task_id,
            host="127.0.0.1",
            port=8080,
            username="u",
            password="",
            server_arguments=["--rounds", "40"],
            files=[BundleFile("server.py", 3, "a" * 64), BundleFile("client.py", 4, "b" * 64)],
            **fields,
        )
    )
    store.upsert_device("dev-1")
    store.upsert_device("dev-2")


def _start(store: Store, task_id: str = "t1", state: str = "running", **kw: Any) -> int:
    run = store.create_run(
        task_id,
        state=state,
        server_arguments=kw.get("server", ["--rounds", "40"]),
        client_arguments=kw.get("client", []),
    )
    return run.run


def _end(store: Store, task_id: str = "t1", state: str = "stopped", reason: str = "") -> None:
    store.set_task_state(task_id, running=False, state=state, reason=reason)


def test_each_start_is_a_run_with_what_it_used(store: Store) -> None:
    _task(store)

    first = store.create_run(
        "t1", state="running", server_arguments=["--rounds", "40"], client_arguments=["-v"]
    )
    store.add_metric("t1", 40, "server", {"acc": 0.9})
    _end(store, state="finished", reason="Finished")
    store.set_task_files("t1", [BundleFile("server.py", 9, "c" * 64)])
    second = store.create_run(
        "t1", state="running", server_arguments=["--rounds", "15"], client_arguments=[]
    )

    assert (first.run, second.run) == (1, 2)
    one, two = store.get_run("t1", 1), store.get_run("t1", 2)
    assert one.state is RunState.FINISHED and one.reason == "Finished" and one.ended_at
    assert one.server_arguments == ("--rounds", "40") and one.client_arguments == ("-v",)
    assert one.bundle_version == 1 and [f.name for f in one.files] == ["client.py", "server.py"]
    assert one.last_round == 40 and one.last_metrics == {"acc": 0.9}
    assert two.state is RunState.RUNNING and two.ended_at is None and two.started_at
    assert two.bundle_version == 2 and two.files == (BundleFile("server.py", 9, "c" * 64),)
    assert two.last_round is None
    task = store.get_task("t1")
    assert task.run == 2 and task.running and task.state is TaskState.RUNNING
    assert [r.run for r in store.list_runs("t1")] == [2, 1]


def test_a_start_is_claimed_once(store: Store) -> None:
    _task(store)
    _start(store)

    with pytest.raises(AgataError) as exc:
        _start(store)

    assert exc.value.code is ErrorCode.CONFLICT
    assert [r.run for r in store.list_runs("t1")] == [1]


def test_metrics_logs_events_and_devices_belong_to_their_run(store: Store) -> None:
    _task(store)
    _start(store)
    store.add_metric("t1", 1, "server", {"acc": 0.5})
    store.add_log_lines("t1", [NewLogLine("server", "stdout", "first run")])
    store.add_event(service="s", function="f", event="in run 1", task_id="t1")
    store.set_device_task_status("dev-1", "t1", "running")
    _end(store)
    _start(store)

    store.add_metric("t1", 1, "server", {"acc": 0.7})
    store.add_log_lines("t1", [NewLogLine("server", "stdout", "second run")])
    store.add_event(service="s", function="f", event="in run 2", task_id="t1")
    store.set_device_task_status("dev-2", "t1", "running")

    assert [m.metrics["acc"] for m in store.list_metrics("t1")] == [0.7]
    assert [m.metrics["acc"] for m in store.list_metrics("t1", run=1)] == [0.5]
    assert [x.text for x in store.tail_logs("t1")] == ["second run"]
    assert [x.text for x in store.tail_logs("t1", run=1)] == ["first run"]
    assert [e.event for e in store.list_events("t1", run=1)] == ["in run 1"]
    assert [e.event for e in store.list_events("t1", run=2)] == ["in run 2"]
    assert [d.user_id for d in store.list_run_devices("t1", 1)] == ["dev-1"]
    assert [d.user_id for d in store.list_run_devices("t1", 2)] == ["dev-2"]
    assert store.get_run("t1", 2).devices_joined == 1


def test_a_device_joins_when_it_first_runs_and_keeps_its_last_round(store: Store) -> None:
    _task(store)
    _start(store)

    store.set_device_task_status("dev-1", "t1", "downloading")
    assert store.get_run("t1", 1).devices_joined == 0
    store.set_device_task_status("dev-1", "t1", "running")
    store.set_device_task_status("dev-1", "t1", "running")
    store.add_metric("t1", 3, "dev-1", {"acc": 0.4})
    store.set_device_task_status("dev-1", "t1", "finished", "done")

    (part,) = store.list_run_devices("t1", 1)
    assert part.joined_at is not None and part.status == "finished" and part.reason == "done"
    assert part.last_round == 3
    run = store.get_run("t1", 1)
    assert run.devices_joined == 1
    assert run.last_metrics == {"acc": 0.4}  # a device's until the server reports
    store.add_metric("t1", 3, "server", {"acc": 0.8})
    store.add_metric("t1", 4, "dev-1", {"acc": 0.1})
    assert store.get_run("t1", 1).last_metrics == {"acc": 0.8}


def test_a_late_report_of_an_older_run_stays_in_that_run(store: Store) -> None:
    _task(store)
    _start(store)
    store.set_device_task_status("dev-1", "t1", "running")
    _end(store)
    _start(store)
    store.set_device_task_status("dev-1", "t1", "running")

    store.set_device_task_status("dev-1", "t1", "stopped", "ended with the run", run=1)

    assert store.list_run_devices("t1", 1)[0].status == "stopped"
    assert store.list_run_devices("t1", 2)[0].status == "running"
    assert store.list_task_devices("t1")[0].status == "running"


def test_unknown_runs_are_not_found(store: Store) -> None:
    _task(store)
    _start(store)

    for call in (
        lambda: store.get_run("t1", 2),
        lambda: store.get_run("nope", 1),
        lambda: store.add_metric("t1", 1, "server", {}, run=5),
        lambda: store.add_artifact("t1", 3, "model.npz", 1, "a" * 64),
        lambda: store.get_artifact("t1", 1, "model.npz"),
        lambda: store.set_device_task_status("dev-1", "t1", "running", run=9),
    ):
        with pytest.raises(AgataError) as exc:
            call()
        assert exc.value.code is ErrorCode.NOT_FOUND
    assert store.list_runs("nope") == []
    with pytest.raises(AgataError) as bad:
        store.get_run("t1", 0)
    assert bad.value.code is ErrorCode.INVALID_ARGUMENT


def test_the_queue_keeps_start_order_and_a_stop_ends_a_queued_run(store: Store) -> None:
    for name in ("a", "b", "c"):
        _task(store, name)
    _start(store, "a")
    _start(store, "b", state="queued")
    _start(store, "c", state="queued")

    queued = store.list_queued_runs()
    assert [(r.task_id, r.state) for r in queued] == [("b", "queued"), ("c", "queued")]
    b = store.get_task("b")
    assert not b.running and b.state is TaskState.QUEUED and b.run == 1
    assert store.count_started_runs() == 1
    with pytest.raises(AgataError) as exc:
        _start(store, "b")
    assert exc.value.code is ErrorCode.CONFLICT
    with pytest.raises(AgataError) as busy:
        store.delete_task("b")
    assert busy.value.code is ErrorCode.CONFLICT

    _end(store, "c", reason="stopped by the operator")
    started = store.start_queued_run("b", 1, state="waiting")

    assert started.state is RunState.WAITING and started.started_at
    assert store.get_task("b").running
    assert store.get_run("c", 1).state is RunState.STOPPED
    assert store.list_queued_runs() == []
    with pytest.raises(AgataError) as again:
        store.start_queued_run("b", 1, state="running")
    assert again.value.code is ErrorCode.CONFLICT
    assert store.set_run_waiting_done("b", 1).state is RunState.RUNNING


def test_an_ended_run_is_not_ended_again(store: Store) -> None:
    _task(store)
    _start(store)
    _end(store, state="failed", reason="boom")
    store.set_task_state("t1", running=False, state="stopped", reason="later")

    assert store.get_run("t1", 1).reason == "boom"


def test_scheduling_fields_are_kept_and_copied_to_runs(store: Store) -> None:
    _task(store, min_devices=3, start_deadline_s=30.0)
    assert store.get_task("t1").min_devices == 3
    _start(store)
    changed = store.update_task("t1", min_devices=1, start_deadline_s=0)

    assert changed.min_devices == 1 and changed.start_deadline_s is None
    run = store.get_run("t1", 1)
    assert (run.min_devices, run.start_deadline_s) == (3, 30.0)


def test_artifacts_are_listed_with_their_run(store: Store) -> None:
    _task(store)
    _start(store)
    store.add_artifact("t1", 1, "model.npz", 10, "d" * 64)
    store.add_artifact("t1", 1, "model.npz", 12, "e" * 64)  # saved again: replaced

    (artifact,) = store.get_run("t1", 1).artifacts
    assert (artifact.name, artifact.size) == ("model.npz", 12)
    assert store.list_runs("t1")[0].artifacts == (artifact,)
    assert store.get_artifact("t1", 1, "model.npz") == artifact


def test_delete_removes_runs(store: Store) -> None:
    _task(store)
    _start(store)
    store.set_device_task_status("dev-1", "t1", "running")
    store.add_artifact("t1", 1, "m", 1, "a" * 64)
    _end(store)

    store.delete_task("t1")

    assert store.list_runs("t1") == []
    _task(store)
    assert _start(store) == 1


def test_list_and_get_read_the_same_rows_with_many_runs(store: Store) -> None:
    """Their statements do not depend on the number of runs or metric rows: the same
    number of them whatever the history (and each reads an index, see the schema)."""
    _task(store)
    for _ in range(30):
        _start(store)
        for r in range(5):
            store.add_metric("t1", r, "server", {"acc": r / 10})
        _end(store)
    assert isinstance(store, SqlStore)
    seen: list[str] = []

    def _before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", _before)
    try:
        page = store.list_runs("t1", limit=10)
        statements_list = len(seen)
        store.get_run("t1", 17)
    finally:
        event.remove(store.engine, "before_cursor_execute", _before)

    assert [r.run for r in page] == list(range(30, 20, -1))
    assert [r.run for r in store.list_runs("t1", limit=10, before=21)] == list(range(20, 10, -1))
    assert statements_list <= 3 and len(seen) - statements_list <= 3
    assert not any("metrics" in s.split("FROM", 1)[-1].split()[0] for s in seen if "FROM" in s)


def test_a_version_5_database_gets_run_1_for_tasks_with_metrics(tmp_path: Path) -> None:
    # Prepare: a database as schema 5 left it: no runs, no run columns
    db = tmp_path / "v5.db"
    store = create_store(f"sqlite:///{db}")
    _task(store, "old")
    _task(store, "fresh")
    store.add_metric("old", 1, "server", {"acc": 0.3})
    store.add_metric("old", 2, "server", {"acc": 0.6})
    store.add_log_lines("old", [NewLogLine("server", "stdout", "hello")])
    store.set_device_task_status("dev-1", "old", "finished")
    store.set_task_state("old", running=False, state="finished", reason="Finished")
    store.close()
    raw = sqlite3.connect(db)
    for table in ("run_devices", "run_artifacts", "runs"):
        raw.execute(f"DROP TABLE {table}")
    for index in ("ix_metrics_task_run_round", "ix_log_lines_task_run_seq"):
        raw.execute(f"DROP INDEX {index}")
    raw.execute("DROP INDEX ix_events_task_run_time")
    for table, column in (
        ("tasks", "run"),
        ("tasks", "min_devices"),
        ("tasks", "start_deadline_s"),
        ("metrics", "run"),
        ("log_lines", "run"),
        ("events", "run"),
    ):
        raw.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    raw.execute("UPDATE schema_version SET version = 5")
    raw.commit()
    raw.close()

    # Execute
    store = create_store(f"sqlite:///{db}")

    # Assert: the old task's history is run 1; the task that never ran has none
    old = store.get_task("old")
    assert old.run == 1 and old.state is TaskState.FINISHED
    (run,) = store.list_runs("old")
    assert run.state is RunState.FINISHED and run.reason == "Finished"
    assert run.last_round == 2 and run.last_metrics == {"acc": 0.6}
    assert run.started_at and run.ended_at and run.devices_joined == 1
    assert [m.round for m in store.list_metrics("old")] == [1, 2]
    assert [x.text for x in store.tail_logs("old", run=1)] == ["hello"]
    assert [d.user_id for d in store.list_run_devices("old", 1)] == ["dev-1"]
    assert store.list_runs("fresh") == [] and store.get_task("fresh").run is None
    assert _start(store, "old") == 2
    store.close()
    raw = sqlite3.connect(db)
    assert raw.execute("SELECT version FROM schema_version").fetchone() == (schema.SCHEMA_VERSION,)
    raw.close()
