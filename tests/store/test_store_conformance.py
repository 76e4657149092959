"""One behaviour suite for every store backend (see ``conftest.py`` for the backends)."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, select, update

from agata.errors import AgataError, ErrorCode
from agata.store import (
    BundleFile,
    DeviceTaskStatus,
    NewEvent,
    NewLogLine,
    NewTask,
    Store,
    TaskState,
    sql_schema,
)
from agata.store.passwords import verify_password
from agata.store.sql_store import SqlStore

OpenStore = Callable[..., Store]
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
SHA = "ab" * 32


def new_task(task_id: str = "t1", **fields: Any) -> NewTask:
    values: dict[str, Any] = {
        "host": "10.0.0.1",
        "port": 8080,
        "username": "dl",
        "password": "s3cret",
        "selection_criteria": "data_qnt > 5",
        "server_arguments": ["--rounds", "3"],
        "client_arguments": ["--epochs", "1"],
        "tags": ["vision", "demo"],
        "files": [BundleFile("server.py", 10, SHA), BundleFile("client.py", 20, SHA)],
    }
    values.update(fields)
    return NewTask(task_id=task_id, **values)


def error_code(exc: pytest.ExceptionInfo[AgataError]) -> ErrorCode:
    return exc.value.code


@contextmanager
def count_selects(store: Store) -> Iterator[list[str]]:
    assert isinstance(store, SqlStore)
    seen: list[str] = []

    def _before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", _before)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", _before)


@contextmanager
def count_statements(store: Store) -> Iterator[list[str]]:
    """The statements ``store`` sends, but transaction control (``BEGIN``, ``COMMIT``)."""
    assert isinstance(store, SqlStore)
    seen: list[str] = []

    def _before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.split()[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", _before)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", _before)


class TestStoreConformance:
    # -- tasks ---------------------------------------------------------------------------

    def test_create_then_get_round_trips_every_field(self, store: Store) -> None:
        created = store.create_task(new_task())

        got = store.get_task("t1")

        assert got == created
        assert got.host == "10.0.0.1" and got.port == 8080
        assert got.username == "dl" and verify_password("s3cret", got.password_hash)
        assert got.selection_criteria == "data_qnt > 5"
        assert got.server_arguments == ("--rounds", "3")
        assert got.client_arguments == ("--epochs", "1")
        assert got.tags == ("vision", "demo")
        assert [f.name for f in got.files] == ["client.py", "server.py"]
        assert got.running is False and got.state is TaskState.STOPPED
        assert got.server_pid is None and got.state_reason == ""
        assert got.version == 1

    def test_password_is_not_in_repr(self, store: Store) -> None:
        task = store.create_task(new_task(password="hunter2-secret"))

        assert "hunter2-secret" not in repr(task)

    def test_secrets_never_reach_the_log(
        self, open_store: OpenStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # log every statement
        store = open_store()
        store.create_task(new_task(password="pw-SECRET-1"))
        with pytest.raises(AgataError):
            store.create_task(new_task(password="pw-SECRET-2"))
        store.update_task("t1", password="pw-SECRET-3")
        store.add_operator_token("op", "hash-SECRET-4")
        with pytest.raises(AgataError):
            store.add_operator_token("op2", "hash-SECRET-4")
        store.upsert_device("d1")
        store.set_device_credential("d1", "cred-SECRET-5")

        assert "INSERT INTO tasks" in caplog.text, "no SQL logged: the test proves nothing"
        assert "SECRET" not in caplog.text

    def test_duplicate_task_id_conflicts_and_keeps_the_original(self, store: Store) -> None:
        store.create_task(new_task(tags=["a"]))

        with pytest.raises(AgataError) as exc:
            store.create_task(new_task(host="other", tags=["b"], files=[]))

        assert error_code(exc) is ErrorCode.CONFLICT
        assert "t1" in exc.value.message and "INSERT" not in exc.value.message
        kept = store.get_task("t1")
        assert kept.host == "10.0.0.1" and kept.tags == ("a",) and len(kept.files) == 2

    UNKNOWN_ID_CALLS: dict[str, Callable[[Store], object]] = {
        "get_task": lambda s: s.get_task("nope"),
        "update_task": lambda s: s.update_task("nope", host="h"),
        "set_task_state": lambda s: s.set_task_state("nope", running=False, state="stopped"),
        "set_task_files": lambda s: s.set_task_files("nope", []),
        "delete_task": lambda s: s.delete_task("nope"),
        "add_metric": lambda s: s.add_metric("nope", 1, "server", {"acc": 1.0}),
        "add_log_lines": lambda s: s.add_log_lines("nope", [NewLogLine("server", "o", "x")]),
        "get_device": lambda s: s.get_device("nope"),
        "touch_device": lambda s: s.touch_device("nope"),
        "set_device_credential": lambda s: s.set_device_credential("nope", "h"),
        "revoke_operator_token": lambda s: s.revoke_operator_token("nope"),
        "revoke_enrollment_token": lambda s: s.revoke_enrollment_token("nope"),
    }

    @pytest.mark.parametrize("call", UNKNOWN_ID_CALLS.values(), ids=UNKNOWN_ID_CALLS.keys())
    def test_unknown_id_is_not_found(self, store: Store, call: Callable[[Store], object]) -> None:
        with pytest.raises(AgataError) as exc:
            call(store)

        assert error_code(exc) is ErrorCode.NOT_FOUND

    def test_lists_of_unknown_parents_are_empty(self, store: Store) -> None:
        assert store.list_metrics("nope") == []
        assert store.tail_logs("nope") == []
        assert store.list_device_tasks("nope") == []
        assert store.list_task_devices("nope") == []
        assert store.list_events(task_id="nope") == []

    def test_update_changes_only_given_fields(self, store: Store) -> None:
        before = store.create_task(new_task())

        after = store.update_task("t1", port=9090, client_arguments=["--x"])

        assert after.port == 9090 and after.client_arguments == ("--x",)
        unchanged = ("host", "username", "password_hash", "selection_criteria", "server_arguments")
        for name in (*unchanged, "tags", "files", "version", "created_at"):
            assert getattr(after, name) == getattr(before, name), name
        assert after.updated_at > before.updated_at

    def test_update_with_no_field_writes_nothing(self, store: Store) -> None:
        before = store.create_task(new_task())

        assert store.update_task("t1") == before

    def test_update_replaces_tags(self, store: Store) -> None:
        store.create_task(new_task())

        assert store.update_task("t1", tags=["x", "y", "x"]).tags == ("x", "y")

    def test_update_never_touches_running_state(self, store: Store) -> None:
        store.create_task(new_task())
        store.set_task_state("t1", running=True, state="running", reason="go", server_pid=42)
        store.add_metric("t1", 1, "server", {"acc": 0.5})
        store.add_log_lines("t1", [NewLogLine("server", "stdout", "line")])

        after = store.update_task("t1", host="h2", password="p2")

        assert after.running is True and after.state is TaskState.RUNNING
        assert after.state_reason == "go" and after.server_pid == 42
        assert len(store.list_metrics("t1")) == 1 and len(store.tail_logs("t1")) == 1

    def test_set_task_state_round_trips(self, store: Store) -> None:
        store.create_task(new_task())

        running = store.set_task_state("t1", running=True, state=TaskState.RUNNING, server_pid=7)
        failed = store.set_task_state("t1", running=False, state="failed", reason="boom")

        assert running.running and running.server_pid == 7
        assert not failed.running and failed.state is TaskState.FAILED
        assert failed.state_reason == "boom" and failed.server_pid is None

    @pytest.mark.parametrize(
        ("running", "state"), [(True, "stopped"), (False, "running"), (False, "bogus")]
    )
    def test_inconsistent_state_is_invalid(self, store: Store, running: bool, state: str) -> None:
        store.create_task(new_task())

        with pytest.raises(AgataError) as exc:
            store.set_task_state("t1", running=running, state=state)

        assert error_code(exc) is ErrorCode.INVALID_ARGUMENT

    def test_expected_running_guards_double_start(self, store: Store) -> None:
        store.create_task(new_task())
        store.set_task_state("t1", running=True, state="running", expected_running=False)

        with pytest.raises(AgataError) as exc:
            store.set_task_state(
                "t1", running=True, state="running", server_pid=9, expected_running=False
            )

        assert error_code(exc) is ErrorCode.CONFLICT
        assert store.get_task("t1").server_pid is None

    def test_list_tasks_filters_on_running(self, store: Store) -> None:
        for task_id in ("a", "b", "c"):
            store.create_task(new_task(task_id))
        store.set_task_state("b", running=True, state="running")

        assert [t.task_id for t in store.list_tasks()] == ["a", "b", "c"]
        assert [t.task_id for t in store.list_tasks(running=True)] == ["b"]
        assert [t.task_id for t in store.list_tasks(running=False)] == ["a", "c"]
        assert [t.task_id for t in store.list_running_tasks()] == ["b"]

    def test_list_running_tasks_uses_few_queries(self, store: Store) -> None:
        for i in range(20):
            files = [BundleFile(f"f{j}.py", j, SHA) for j in range(3)]
            store.create_task(new_task(f"t{i:02}", tags=[f"tag{i}", "all"], files=files))
            store.set_task_state(f"t{i:02}", running=True, state="running")

        with count_selects(store) as selects:
            running = store.list_running_tasks()

        assert len(running) == 20
        assert all(len(t.files) == 3 and t.tags[1] == "all" for t in running)
        assert len(selects) <= 3

    def test_task_limits_round_trip_and_update_replaces_them(self, store: Store) -> None:
        created = store.create_task(new_task(limits={"memory_mb": 256, "cpu_cores": 0.5}))
        plain = store.create_task(new_task("t2"))

        changed = store.update_task("t1", limits={"pids": 64})
        untouched = store.update_task("t1", host="h2")
        cleared = store.update_task("t2", limits={})

        assert created.limits == {"memory_mb": 256, "cpu_cores": 0.5}
        assert plain.limits == {}
        assert changed.limits == {"pids": 64} == untouched.limits
        assert cleared.limits == {}

    def test_set_task_files_replaces_and_bumps_version(self, store: Store) -> None:
        store.create_task(new_task())

        after = store.set_task_files("t1", [BundleFile("client.py", 99, SHA)])

        assert after.version == 2
        assert after.files == (BundleFile("client.py", 99, SHA),)
        assert store.set_task_files("t1", []).version == 3

    def test_invalid_files_change_nothing(self, store: Store) -> None:
        store.create_task(new_task())

        with pytest.raises(AgataError) as exc:
            store.set_task_files("t1", [BundleFile("a.py", 1, SHA), BundleFile("a.py", 2, SHA)])

        assert error_code(exc) is ErrorCode.INVALID_ARGUMENT
        assert store.get_task("t1").version == 1

    def test_delete_is_refused_while_running(self, store: Store) -> None:
        store.create_task(new_task())
        store.set_task_state("t1", running=True, state="running")

        with pytest.raises(AgataError) as exc:
            store.delete_task("t1")

        assert error_code(exc) is ErrorCode.CONFLICT
        assert store.get_task("t1").running

    def test_delete_removes_dependent_rows_but_keeps_events(self, store: Store) -> None:
        store.create_task(new_task())
        store.upsert_device("d1")
        store.set_device_task_status("d1", "t1", "running")
        store.add_metric("t1", 1, "server", {"acc": 0.5})
        store.add_log_lines("t1", [NewLogLine("server", "stdout", "x")])
        store.add_event(service="cloud", function="f", event="e", task_id="t1")

        store.delete_task("t1")

        with pytest.raises(AgataError):
            store.get_task("t1")
        assert store.list_metrics("t1") == [] and store.tail_logs("t1") == []
        assert store.list_device_tasks("d1") == []
        assert len(store.list_events(task_id="t1")) == 1
        store.create_task(new_task(files=[]))  # the id is free again, with no old rows
        assert store.get_task("t1").files == () and store.tail_logs("t1") == []

    # -- dates and strings ---------------------------------------------------------------

    def test_dates_are_iso_utc(self, store: Store) -> None:
        before = datetime.now(UTC) - timedelta(seconds=5)
        task = store.create_task(new_task())
        device = store.upsert_device("d1")
        state = store.set_device_task_status("d1", "t1", "downloading")
        token = store.add_operator_token("op", "hash1")
        expiry = datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=timezone(timedelta(hours=2)))
        enrollment = store.add_enrollment_token("en", "hash2", expires_at=expiry)
        after = datetime.now(UTC) + timedelta(seconds=5)

        stamps = [task.created_at, task.updated_at, device.created_at, device.last_seen]
        stamps += [state.updated_at, token.created_at, enrollment.created_at]
        for stamp in stamps:
            assert ISO_UTC.match(stamp), stamp
            parsed = datetime.fromisoformat(stamp)
            assert parsed.utcoffset() == timedelta(0) and before < parsed < after
        assert enrollment.expires_at == "2030-01-02T01:04:05.600000Z"
        assert store.get_task("t1").created_at == task.created_at

    def test_unicode_and_huge_strings_round_trip(self, store: Store) -> None:
        huge = "ünïcødé ✓ 😀 中文 " * 60_000  # ~1 M characters, ~2 MB UTF-8
        task = new_task(
            "tâche-😀", password="pässwörd 🔑", selection_criteria=huge, tags=["étiquette", "标签"]
        )
        store.create_task(task)
        store.upsert_device("appareil-😀", sensors=["caméra"], extra={"note": huge, "ñ": [1]})
        store.add_event(service="s", function="f", event="é", data={"big": huge})

        got = store.get_task("tâche-😀")
        device = store.get_device("appareil-😀")
        event_data = store.list_events()[0].data

        assert got.selection_criteria == huge and verify_password("pässwörd 🔑", got.password_hash)
        assert got.tags == ("étiquette", "标签")
        assert device.sensors == {"caméra"} and device.extra == {"note": huge, "ñ": [1]}
        assert event_data == {"big": huge}

    @pytest.mark.parametrize(
        "bad",
        [
            new_task("x" * 256),
            new_task(""),
            new_task("nul\x00"),
            new_task(port=0),
            new_task(password="lone \ud800 surrogate"),
            new_task(tags="vision"),
        ],
    )
    def test_values_no_backend_can_keep_are_invalid(self, store: Store, bad: NewTask) -> None:
        with pytest.raises(AgataError) as exc:
            store.create_task(bad)

        assert error_code(exc) is ErrorCode.INVALID_ARGUMENT
        assert store.list_tasks() == []

    # -- devices -------------------------------------------------------------------------

    def test_upsert_inserts_then_updates_given_fields(self, store: Store) -> None:
        first = store.upsert_device("d1", data_qnt=10, sensors=["gps"], extra={"os": "linux"})

        second = store.upsert_device("d1", avg_acc_contrib=0.7)

        assert first.data_qnt == 10.0 and first.avg_acc_contrib is None
        assert second.data_qnt == 10.0 and second.avg_acc_contrib == 0.7
        assert second.sensors == {"gps"} and second.extra == {"os": "linux"}
        assert second.created_at == first.created_at
        assert second.last_seen > first.last_seen
        assert store.get_device("d1") == second

    def test_sensors_are_replaced_as_a_set(self, store: Store) -> None:
        store.upsert_device("d1", sensors=["camera", "gps"])

        device = store.upsert_device("d1", sensors=["mic", "camera", "mic"])

        assert device.sensors == frozenset({"camera", "mic"})
        assert store.upsert_device("d1", sensors=[]).sensors == frozenset()

    def test_invalid_device_values_write_nothing(self, store: Store) -> None:
        for bad in ({"data_qnt": float("nan")}, {"extra": {"s": {1, 2}}}, {"sensors": [1]}):
            with pytest.raises(AgataError) as exc:
                store.upsert_device("d1", **bad)
            assert error_code(exc) is ErrorCode.INVALID_ARGUMENT
        assert store.list_devices() == []

    def test_list_devices_with_sensors(self, store: Store) -> None:
        store.upsert_device("b", sensors=["x"])
        store.upsert_device("a", sensors=["y", "z"])

        devices = store.list_devices()

        assert [(d.user_id, d.sensors) for d in devices] == [("a", {"y", "z"}), ("b", {"x"})]

    def test_touch_devices_in_one_go_skips_unknown_ids(self, store: Store) -> None:
        ids = [f"d{n:04d}" for n in range(1203)]  # more than one chunk of 500
        for user_id in ids:
            store.upsert_device(user_id)
        before = {d.user_id: d.last_seen for d in store.list_devices()}

        updated = store.touch_devices([*ids[:1201], "nope", ids[0]])

        after = {d.user_id: d.last_seen for d in store.list_devices()}
        assert updated == 1201
        assert all(after[u] > before[u] for u in ids[:1201])
        assert all(after[u] == before[u] for u in ids[1201:])
        assert store.touch_devices([]) == 0

    def test_a_credential_is_claimed_once(self, store: Store) -> None:
        store.upsert_device("d1")

        first = store.claim_device_credential("d1", "hash-a")
        second = store.claim_device_credential("d1", "hash-b")
        kept = store.get_device("d1").credential_hash
        store.set_device_credential("d1", None)  # revoked: free again
        after_revoke = store.claim_device_credential("d1", "hash-c")

        assert (first, second, kept, after_revoke) == (True, False, "hash-a", True)
        with pytest.raises(AgataError) as unknown:
            store.claim_device_credential("nope", "hash-d")
        assert unknown.value.code is ErrorCode.NOT_FOUND

    def test_touch_and_credential(self, store: Store) -> None:
        before = store.upsert_device("d1")

        store.touch_device("d1")
        store.set_device_credential("d1", "scrypt$abc")
        touched = store.get_device("d1")

        assert touched.last_seen > before.last_seen
        assert touched.credential_hash == "scrypt$abc" and "scrypt$abc" not in repr(touched)
        store.set_device_credential("d1", None)
        assert store.get_device("d1").credential_hash is None

    def test_find_device_by_credential_hash(self, store: Store) -> None:
        store.upsert_device("d1")
        store.upsert_device("d2")
        store.set_device_credential("d2", "a" * 64)

        assert store.find_device_by_credential_hash("a" * 64) == "d2"
        assert store.find_device_by_credential_hash("b" * 64) is None

    def test_concurrent_upserts_of_a_new_device_all_succeed(self, store: Store) -> None:
        errors: list[BaseException] = []

        def _upsert(i: int) -> None:
            try:
                store.upsert_device("new", data_qnt=i, sensors=[f"s{i}"])
            except BaseException as exc:  # collected for the assert below
                errors.append(exc)

        threads = [threading.Thread(target=_upsert, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert len(store.get_device("new").sensors) == 1

    def test_device_task_status_and_quarantine(self, store: Store) -> None:
        store.create_task(new_task("t1"))
        store.create_task(new_task("t2"))
        store.upsert_device("d1")
        store.upsert_device("d2")
        store.set_device_task_status("d1", "t1", "downloading")
        store.set_device_task_status("d1", "t1", DeviceTaskStatus.QUARANTINED, "crashed")
        store.set_device_task_status("d1", "t2", "quarantined")
        store.set_device_task_status("d2", "t1", "running")

        d1 = store.list_device_tasks("d1")
        t1 = store.list_task_devices("t1")

        assert [(s.task_id, s.status, s.reason) for s in d1] == [
            ("t1", DeviceTaskStatus.QUARANTINED, "crashed"),
            ("t2", DeviceTaskStatus.QUARANTINED, ""),
        ]
        assert [(s.user_id, s.status) for s in t1] == [
            ("d1", DeviceTaskStatus.QUARANTINED),
            ("d2", DeviceTaskStatus.RUNNING),
        ]
        assert store.clear_quarantine("d1", "t2") == 1
        assert store.clear_quarantine("d1") == 1
        assert store.list_device_tasks("d1") == []
        assert len(store.list_device_tasks("d2")) == 1

    def test_a_quarantine_keeps_its_expiry_and_a_task_clears_all_of_its_own(
        self, store: Store
    ) -> None:
        store.create_task(new_task("t1"))
        store.create_task(new_task("t2"))
        for user_id in ("d1", "d2"):
            store.upsert_device(user_id)
        until = 1_900_000_000.5

        kept = store.set_device_task_status(
            "d1", "t1", "quarantined", "broken", quarantined_until=until
        )
        store.set_device_task_status("d2", "t1", "quarantined", "broken", quarantined_until=until)
        store.set_device_task_status("d2", "t2", "quarantined")
        ignored = store.set_device_task_status("d1", "t2", "failed", quarantined_until=until)

        assert kept.quarantined_until is not None
        assert datetime.fromisoformat(kept.quarantined_until).timestamp() == until
        assert store.list_device_tasks("d1")[0] == kept
        assert ignored.quarantined_until is None  # only a quarantine has an expiry
        assert store.list_device_tasks("d2")[1].quarantined_until is None  # none said
        assert store.clear_quarantine(None, "t1") == 2
        assert [(s.user_id, s.task_id) for s in store.list_task_devices("t2")] == [
            ("d1", "t2"),
            ("d2", "t2"),
        ]
        assert store.list_task_devices("t1") == []

    def test_device_task_status_needs_both_ids(self, store: Store) -> None:
        store.create_task(new_task())
        store.upsert_device("d1")

        for user_id, task_id in (("d1", "nope"), ("nope", "t1")):
            with pytest.raises(AgataError) as exc:
                store.set_device_task_status(user_id, task_id, "running")
            assert error_code(exc) is ErrorCode.NOT_FOUND
        with pytest.raises(AgataError) as bad:
            store.set_device_task_status("d1", "t1", "sleeping")
        assert error_code(bad) is ErrorCode.INVALID_ARGUMENT

    def test_device_task_status_of_unknown_ids_names_the_unknown_one(self, store: Store) -> None:
        """The ids are checked only once the foreign keys refused the row (issue 15)."""
        store.create_task(new_task())
        store.upsert_device("d1")
        store.create_run("t1", state="running", server_arguments=[], client_arguments=[])

        cases = [("nope", "t1", "device 'nope'"), ("d1", "gone", "task 'gone'")]
        cases.append(("nope", "gone", "device 'nope'"))  # the device is named first
        for user_id, task_id, words in cases:
            with pytest.raises(AgataError) as exc:
                store.set_device_task_status(user_id, task_id, "running")
            assert error_code(exc) is ErrorCode.NOT_FOUND
            assert words in exc.value.message, exc.value.message
        with pytest.raises(AgataError) as old_run:
            store.set_device_task_status("nope", "t1", "finished", run=1)
        assert "device 'nope'" in old_run.value.message
        assert store.list_task_devices("t1") == []
        assert store.list_run_devices("t1", 1) == []  # nothing of the refused reports stays
        store.delete_device("d1")
        with pytest.raises(AgataError) as deleted:
            store.set_device_task_status("d1", "t1", "running")
        assert "device 'd1'" in deleted.value.message

    def test_a_report_of_a_known_device_is_four_statements(self, store: Store) -> None:
        """A round's report: its task's current run, its part in the run (read, write)
        and one upsert returning the row: no existence check, no read back (issue 15;
        before: 6)."""
        store.create_task(new_task())
        store.upsert_device("d1")
        store.create_run("t1", state="running", server_arguments=[], client_arguments=[])
        store.set_device_task_status("d1", "t1", "running")  # joins the run

        with count_statements(store) as statements:  # a round's report
            state = store.set_device_task_status("d1", "t1", "running", "go")

        assert len(statements) == 4, statements
        assert (state.status, state.reason) == (DeviceTaskStatus.RUNNING, "go")
        assert store.list_device_tasks("d1") == [state]
        assert store.get_run("t1", 1).devices_joined == 1

    # -- events, metrics, logs -----------------------------------------------------------

    def test_events_are_added_together_in_one_transaction(self, store: Store) -> None:
        store.create_task(new_task())
        store.create_run("t1", state="running", server_arguments=[], client_arguments=[])
        news = [
            NewEvent("s", "f", "first", time=30.0, task_id="t1"),
            NewEvent("s", "f", "second", time=10.0, user_id="d1", data={"k": [1, "x"]}),
            NewEvent("s", "f", "third", time=20.0, task_id="t1", run=1),
            NewEvent("s", "f", "fourth", task_id="unknown"),
        ]

        commits: list[object] = []

        def _on_commit(conn: object) -> None:
            commits.append(conn)

        event.listen(store.engine, "commit", _on_commit)
        with count_statements(store) as statements:
            events = store.add_events(news)
        event.remove(store.engine, "commit", _on_commit)

        assert len(commits) == 1
        if store.engine.dialect.name == "postgresql":  # SQLite: one INSERT per row
            assert len(statements) == 2, statements  # the tasks' runs, one INSERT
        assert [e.event for e in events] == ["first", "second", "third", "fourth"]
        assert len({e.id for e in events}) == 4
        assert [e.run for e in events] == [1, None, 1, None]
        assert events[1].data == {"k": [1, "x"]}
        assert store.list_events() == sorted(events, key=lambda e: (e.time, e.id))
        assert store.add_events([]) == []
        with pytest.raises(AgataError) as bad:
            store.add_events([NewEvent("s", "f", "kept?"), NewEvent("s", "f", "x\x00")])
        assert error_code(bad) is ErrorCode.INVALID_ARGUMENT
        assert [e.event for e in store.list_events()] == ["second", "third", "first", "fourth"]

    def test_events_filter_and_order(self, store: Store) -> None:
        store.add_event(service="cloud", function="f", event="late", time=30.0, task_id="t1")
        store.add_event(service="cloud", function="f", event="early", time=10.0, task_id="t1")
        store.add_event(service="edge", function="g", event="other", time=20.0, user_id="d1")

        assert [e.event for e in store.list_events()] == ["early", "other", "late"]
        assert [e.event for e in store.list_events(task_id="t1")] == ["early", "late"]
        assert [e.event for e in store.list_events(since=20.0)] == ["other", "late"]
        assert [e.event for e in store.list_events(limit=1)] == ["early"]
        assert store.list_events(task_id="t1")[0].data == {}

    def test_metrics_round_trip(self, store: Store) -> None:
        store.create_task(new_task())
        store.add_metric("t1", 2, "d1", {"acc": 0.9}, time=5.0)
        store.add_metric("t1", 1, "server", {"acc": 0.5, "loss": 1}, time=4.0)

        metrics = store.list_metrics("t1")

        assert [(m.round, m.source, m.metrics) for m in metrics] == [
            (1, "server", {"acc": 0.5, "loss": 1.0}),
            (2, "d1", {"acc": 0.9}),
        ]
        with pytest.raises(AgataError) as exc:
            store.add_metric("t1", 3, "server", {"loss": float("inf")})
        assert error_code(exc) is ErrorCode.INVALID_ARGUMENT

    @pytest.mark.parametrize(
        "call",
        [
            lambda s: s.add_metric("t1", 2**63, "d1", {"acc": 0.5}),
            lambda s: s.add_metric("t1", 2**31, "d1", {"acc": 0.5}),  # an INTEGER column
            lambda s: s.add_metric("t1", 1, "d1", {"acc": 10**400}),
            lambda s: s.set_task_files("t1", [BundleFile("big.bin", 10**25, SHA)]),
            lambda s: s.set_task_files("t1", [BundleFile("big.bin", 2**63, SHA)]),
            lambda s: s.set_task_state("t1", running=True, state="running", server_pid=2**64),
            lambda s: s.tail_logs("t1", after_seq=10**25),
            lambda s: s.tail_logs("t1", n=2**70),
            lambda s: s.list_events("t1", limit=2**64),
            lambda s: s.add_enrollment_token("e", "h", uses=2**31),
            lambda s: s.upsert_device("d1", data_qnt=10**400),  # type: ignore[arg-type]
        ],
    )
    def test_integers_out_of_range_are_invalid_and_write_nothing(
        self, store: Store, call: Callable[[Store], object]
    ) -> None:
        """Issue 14, item 8: SQLite raised OverflowError (a 500) past 64 bits and
        PostgreSQL refused past its column's range; now every store says 400 first."""
        store.create_task(new_task())
        store.upsert_device("d1", data_qnt=1.0)

        with pytest.raises(AgataError) as exc:
            call(store)

        assert error_code(exc) is ErrorCode.INVALID_ARGUMENT
        task = store.get_task("t1")
        assert task.version == 1 and not task.running and task.server_pid is None
        assert store.list_metrics("t1") == [] and store.list_enrollment_tokens() == []
        assert store.get_device("d1").data_qnt == 1.0

    def test_largest_integers_in_range_round_trip(self, store: Store) -> None:
        store.create_task(new_task())

        store.add_metric("t1", 2**31 - 1, "d1", {"acc": 0.5})
        task = store.set_task_files("t1", [BundleFile("big.bin", 2**63 - 1, SHA)])

        assert [m.round for m in store.list_metrics("t1")] == [2**31 - 1]
        assert task.files == (BundleFile("big.bin", 2**63 - 1, SHA),)

    def test_log_is_capped_per_task(self, open_store: OpenStore) -> None:
        store = open_store(log_cap=10)
        store.create_task(new_task("t1"))
        store.create_task(new_task("t2"))
        store.add_log_lines("t2", [NewLogLine("server", "stderr", "keep me")])

        store.add_log_lines("t1", [NewLogLine("server", "stdout", f"a{i}") for i in range(7)])
        last = store.add_log_lines("t1", [NewLogLine("d1", "stdout", f"b{i}") for i in range(7)])

        lines = store.tail_logs("t1", n=100)
        assert last == 14
        assert [line.seq for line in lines] == list(range(5, 15))
        assert lines[0].text == "a4" and lines[-1].text == "b6"
        assert [line.text for line in store.tail_logs("t1", n=2)] == ["b5", "b6"]
        assert [line.seq for line in store.tail_logs("t1", after_seq=12)] == [13, 14]
        assert store.add_log_lines("t1", [NewLogLine("s", "o", f"c{i}") for i in range(25)]) == 39
        assert [line.seq for line in store.tail_logs("t1", n=100)] == list(range(30, 40))
        assert [line.text for line in store.tail_logs("t2")] == ["keep me"]

    def test_log_text_is_made_storable(self, store: Store) -> None:
        store.create_task(new_task())

        store.add_log_lines("t1", [NewLogLine("server", "stdout", "nul\x00 ünï 😀", time=1.5)])

        (line,) = store.tail_logs("t1")
        assert line.text == "nul\ufffd ünï 😀" and line.time == 1.5 and line.stream == "stdout"

    def test_task_progress_gives_the_current_run_and_running_devices(self, store: Store) -> None:
        for task_id in ("t1", "t2", "t3"):
            store.create_task(new_task(task_id))
        for user_id in ("d2", "d1", "d3"):
            store.upsert_device(user_id)
        for task_id in ("t1", "t2"):
            store.create_run(task_id, state="running", server_arguments=[], client_arguments=[])
        store.add_metric("t1", 2, "server", {"acc": 0.7})
        store.set_task_state("t2", running=False, state="finished")  # ends run 1
        store.create_run("t2", state="running", server_arguments=[], client_arguments=[])
        store.set_device_task_status("d2", "t1", "running")
        store.set_device_task_status("d1", "t1", "running")
        store.set_device_task_status("d3", "t1", "failed")
        store.set_device_task_status("d3", "t2", "running")

        with count_selects(store) as selects:
            progress = store.task_progress(["t1", "t2", "t3", "nope"])

        t1, t2, t3 = progress["t1"], progress["t2"], progress["t3"]
        assert t1.run == store.get_run("t1", 1)
        assert t1.devices_running == ("d1", "d2")
        assert t2.run == store.get_run("t2", 2)  # the current run, not the first
        assert t2.devices_running == ("d3",)
        assert t3.run is None and t3.devices_running == ()
        assert progress["nope"].run is None
        assert store.task_progress([]) == {}
        assert len(selects) <= 3

    def test_device_task_states_of_many_devices_in_one_query(self, store: Store) -> None:
        store.create_task(new_task("t1"))
        store.create_task(new_task("t2"))
        for i in range(10):
            store.upsert_device(f"d{i}")
            store.set_device_task_status(f"d{i}", "t2", "running")
            if i % 2:
                store.set_device_task_status(f"d{i}", "t1", "failed", "boom")

        with count_selects(store) as selects:
            every = store.device_task_states()
            some = store.device_task_states(["d1", "d2", "unknown"])

        assert sorted(every) == [f"d{i}" for i in range(10)]
        assert [(s.task_id, s.status) for s in every["d1"]] == [
            ("t1", DeviceTaskStatus.FAILED),
            ("t2", DeviceTaskStatus.RUNNING),
        ]
        assert every["d1"] == store.list_device_tasks("d1")
        assert sorted(some) == ["d1", "d2"]
        assert store.device_task_states([]) == {}
        assert len(selects) == 2

    # -- tokens --------------------------------------------------------------------------

    def test_operator_tokens(self, store: Store) -> None:
        token = store.add_operator_token("alice", "h-alice")

        found = store.find_operator_token_by_hash("h-alice")
        with pytest.raises(AgataError) as dup:
            store.add_operator_token("bob", "h-alice")
        store.revoke_operator_token(token.token_id)
        store.revoke_operator_token(token.token_id)

        assert found == token and "h-alice" not in repr(token)
        assert error_code(dup) is ErrorCode.CONFLICT
        assert store.find_operator_token_by_hash("h-alice") is None
        assert store.find_operator_token_by_hash("unknown") is None
        assert [(t.name, t.revoked) for t in store.list_operator_tokens()] == [("alice", True)]

    def test_enrollment_tokens_expire_and_run_out(self, store: Store) -> None:
        past = datetime.now(UTC) - timedelta(minutes=1)
        future = datetime.now(UTC) + timedelta(hours=1)
        store.add_enrollment_token("twice", "h2", uses=2, expires_at=future)
        store.add_enrollment_token("expired", "hx", expires_at=past)
        revoked = store.add_enrollment_token("revoked", "hr")
        store.revoke_enrollment_token(revoked.token_id)

        first = store.consume_enrollment_token("h2")
        second = store.consume_enrollment_token("h2")

        assert first is not None and first.uses_left == 1
        assert second is not None and second.uses_left == 0
        assert store.consume_enrollment_token("h2") is None
        assert store.consume_enrollment_token("hx") is None
        assert store.consume_enrollment_token("hr") is None
        assert store.consume_enrollment_token("unknown") is None
        assert [t.name for t in store.list_enrollment_tokens()] == ["twice", "expired", "revoked"]
        with pytest.raises(AgataError) as naive:
            store.add_enrollment_token("n", "hn", expires_at=datetime(2030, 1, 1))
        assert error_code(naive) is ErrorCode.INVALID_ARGUMENT

    def test_enrollment_token_uses_are_not_exceeded_concurrently(self, store: Store) -> None:
        store.add_enrollment_token("three", "h3", uses=3)
        results: list[object] = []

        def _consume() -> None:
            results.append(store.consume_enrollment_token("h3"))

        threads = [threading.Thread(target=_consume) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert sum(r is not None for r in results) == 3

    # -- lifecycle -----------------------------------------------------------------------

    def test_closed_store_is_unavailable(self, open_store: OpenStore) -> None:
        store = open_store()
        store.close()

        with pytest.raises(AgataError) as exc:
            store.list_tasks()

        assert error_code(exc) is ErrorCode.UNAVAILABLE


def _stored_passwords(store: Store) -> dict[str, str]:
    """What the tasks table holds in its password column, read past the store's API."""
    assert isinstance(store, SqlStore)
    with store.engine.connect() as conn:
        rows = conn.execute(select(sql_schema.tasks.c.task_id, sql_schema.tasks.c.password))
        return {row.task_id: row.password for row in rows}


class TestTaskPasswords:
    def test_the_database_holds_no_clear_password(self, store: Store) -> None:
        store.create_task(new_task("t1", password="first-secret"))
        store.create_task(new_task("t2", password="first-secret"))

        raw = _stored_passwords(store)

        assert all(value.startswith("scrypt$") for value in raw.values())
        assert not any("first-secret" in value for value in raw.values())
        assert raw["t1"] != raw["t2"]  # a salt per row

    def test_a_changed_password_replaces_the_hash(self, store: Store) -> None:
        store.create_task(new_task(password="old-secret"))

        changed = store.update_task("t1", password="new-secret")

        assert verify_password("new-secret", changed.password_hash)
        assert not verify_password("old-secret", changed.password_hash)
        assert "new-secret" not in _stored_passwords(store)["t1"]
        assert "new-secret" not in repr(changed) and changed.password_hash not in repr(changed)

    def test_an_empty_password_stays_empty(self, store: Store) -> None:
        store.create_task(new_task(password=""))

        assert store.get_task("t1").password_hash == "" == _stored_passwords(store)["t1"]

    def test_clear_rows_of_version_2_are_hashed_when_migrated(self, store: Store) -> None:
        # Prepare: rows as schema version 2 kept them (in clear)
        store.create_task(new_task("t1"))
        store.create_task(new_task("t2", password=""))
        assert isinstance(store, SqlStore)
        with store.engine.begin() as conn:
            conn.execute(
                update(sql_schema.tasks)
                .where(sql_schema.tasks.c.task_id == "t1")
                .values(password="clear-pw")
            )
            conn.execute(update(sql_schema.schema_version).values(version=2))

        # Execute: start-up again
        store.initialize()

        # Assert: hashed, still authenticates, version bumped
        raw = _stored_passwords(store)
        assert raw["t1"].startswith("scrypt$") and "clear-pw" not in raw["t1"]
        assert raw["t2"] == ""
        assert verify_password("clear-pw", store.get_task("t1").password_hash)
        with store.engine.connect() as conn:
            version = conn.execute(select(sql_schema.schema_version.c.version)).scalar()
        assert version == sql_schema.SCHEMA_VERSION
