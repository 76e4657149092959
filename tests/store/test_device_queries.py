"""Paged device queries (Store.query_devices) and decommission, on every backend."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agata.errors import AgataError, ErrorCode
from agata.store import NewTask, Store, create_store
from agata.store import sql_schema as schema
from agata.store.queries import DEVICE_SORT_KEYS, DeviceQuery
from agata.store.store import Device


def _ids(store: Store, **fields: object) -> list[str]:
    return [d.user_id for d in store.query_devices(DeviceQuery(**fields)).items]  # type: ignore[arg-type]


def _fleet(store: Store) -> None:
    store.create_task(NewTask(task_id="t1", host="h", port=1, username="u", password="p"))
    for i, (qnt, location, sensors) in enumerate(
        [(10.0, "lab", ["camera"]), (60.0, "lab", []), (None, "field", ["gps"]), (90.0, "x", [])]
    ):
        store.upsert_device(
            f"dev-{i}", data_qnt=qnt, sensors=sensors, extra={"location": location, "n": i}
        )


def test_pages_sort_and_count(store: Store) -> None:
    _fleet(store)

    page = store.query_devices(DeviceQuery(limit=2, offset=1))
    by_qnt = _ids(store, sort="data_qnt")
    by_qnt_desc = _ids(store, sort="data_qnt", descending=True)
    past_the_end = store.query_devices(DeviceQuery(offset=10))

    assert [d.user_id for d in page.items] == ["dev-1", "dev-2"]
    assert page.total == 4
    assert page.items[0].sensors == frozenset()
    assert by_qnt == ["dev-0", "dev-1", "dev-3", "dev-2"]  # no value: last
    assert by_qnt_desc == ["dev-3", "dev-1", "dev-0", "dev-2"]
    assert past_the_end.items == [] and past_the_end.total == 4


def test_each_condition_filters(store: Store) -> None:
    _fleet(store)
    store.set_device_task_status("dev-1", "t1", "quarantined")
    store.set_device_task_status("dev-3", "t1", "running")
    store.set_device_credential("dev-2", "hash-2")
    store.set_device_credential("dev-3", "hash-3")
    store.set_device_credential("dev-3", None)
    future = datetime.now(UTC) + timedelta(hours=1)

    assert _ids(store, words=("-2",)) == ["dev-2"]
    assert _ids(store, words=("camera",)) == ["dev-0"]  # a sensor's name
    assert _ids(store, words=("%",)) == []  # LIKE's wildcards are escaped
    assert _ids(store, sensors=("gps",)) == ["dev-2"]
    assert _ids(store, task_statuses=("quarantined",)) == ["dev-1"]
    assert _ids(store, tasks=("t1",)) == ["dev-1", "dev-3"]
    assert _ids(store, revoked=True) == ["dev-3"]
    assert _ids(store, enrolled=True) == ["dev-2"]
    assert _ids(store, numbers=(("data_qnt", ">", 50.0),)) == ["dev-1", "dev-3"]
    assert _ids(store, numbers=(("data_qnt", "!=", 10.0),)) == ["dev-1", "dev-3"]
    assert _ids(store, attributes=(("location", "=", "lab"),)) == ["dev-0", "dev-1"]
    assert _ids(store, attributes=(("location", "!=", "lab"),)) == ["dev-2", "dev-3"]
    assert _ids(store, attributes=(("n", ">=", 2.0),)) == ["dev-2", "dev-3"]
    assert _ids(store, attributes=(("n", "!=", 2.0),)) == ["dev-0", "dev-1", "dev-3"]
    store.upsert_device("dev-3", extra={"location": "lab"})  # replaces the indexed copy
    assert _ids(store, attributes=(("n", "=", 3.0),)) == []
    assert _ids(store, attributes=(("location", "=", "lab"),)) == ["dev-0", "dev-1", "dev-3"]
    assert _ids(store, seen_before=future) == ["dev-0", "dev-1", "dev-2", "dev-3"]
    assert _ids(store, seen_since=future) == []
    assert store.get_device("dev-3").revoked_at is not None
    store.claim_device_credential("dev-3", "hash-new")
    assert store.get_device("dev-3").revoked_at is None


def test_a_predicate_is_applied_in_order_and_counted(store: Store) -> None:
    _fleet(store)

    page = store.query_devices(
        DeviceQuery(
            predicate=lambda d: int(d["n"]) % 2 == 1 and d["sensors"] == [],
            sort="user_id",
            descending=True,
            limit=1,
        )
    )

    assert [d.user_id for d in page.items] == ["dev-3"]
    assert page.total == 2  # dev-1 and dev-3
    with pytest.raises(AgataError) as exc:
        store.query_devices(DeviceQuery(predicate=lambda d: True, scan_limit=3))
    assert exc.value.code is ErrorCode.INVALID_ARGUMENT
    assert "q:" in exc.value.message


def test_decommission_keeps_history(store: Store) -> None:
    _fleet(store)
    store.set_device_task_status("dev-1", "t1", "finished")
    store.add_metric("t1", 1, "dev-1", {"accuracy": 0.5})

    store.delete_device("dev-1")

    assert "dev-1" not in _ids(store)
    assert store.list_task_devices("t1") == []
    assert [m.source for m in store.list_metrics("t1")] == ["dev-1"]
    with pytest.raises(AgataError) as exc:
        store.delete_device("dev-1")
    assert exc.value.code is ErrorCode.NOT_FOUND


def test_a_version_2_database_gains_revocations_and_indexes(tmp_path: Path) -> None:
    # Prepare: a database as version 2 left it (no revoked_at, no query indexes)
    db = tmp_path / "v2.db"
    store = create_store(f"sqlite:///{db}")
    store.upsert_device("dev-0")
    store.close()
    raw = sqlite3.connect(db)
    for index in ("ix_devices_last_seen", "ix_device_sensors_sensor", "ix_device_tasks_status"):
        raw.execute(f"DROP INDEX {index}")
    raw.execute("ALTER TABLE devices DROP COLUMN revoked_at")
    raw.execute("ALTER TABLE tasks DROP COLUMN kind")  # since version 5
    raw.execute("UPDATE schema_version SET version = 2")
    raw.commit()
    raw.close()

    # Execute
    store = create_store(f"sqlite:///{db}")
    store.set_device_credential("dev-0", None)

    # Assert
    assert store.get_device("dev-0").revoked_at is not None
    store.close()
    raw = sqlite3.connect(db)
    indexes = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"ix_devices_last_seen", "ix_device_sensors_sensor"} <= indexes
    assert raw.execute("SELECT version FROM schema_version").fetchone() == (schema.SCHEMA_VERSION,)
    raw.close()


def test_long_strings_are_kept_but_not_indexed(store: Store) -> None:
    long = "x" * 20_000

    store.upsert_device("dev-long", extra={"note": long, "site": "lab"})

    assert store.get_device("dev-long").extra["note"] == long
    assert _ids(store, attributes=(("site", "=", "lab"),)) == ["dev-long"]
    assert _ids(store, attributes=(("note", "=", long[:512]),)) == []


def _forty(store: Store) -> None:
    """40 devices with ties, missing values and two tasks (device ``q-07`` quarantined
    in both)."""
    for task in ("t1", "t2"):
        store.create_task(NewTask(task_id=task, host="h", port=1, username="u", password="p"))
    for i in range(40):
        store.upsert_device(
            f"q-{i:02d}",
            data_qnt=None if i % 7 == 0 else float(i % 10),
            avg_acc_contrib=float(i % 3),
            sensors=["camera"] * (i % 2) + ["gps"] * (i % 3 == 0),
            extra={"location": "lab" if i % 4 < 2 else "field", "battery": i},
        )
    for user_id in ("q-07", "q-08"):
        store.set_device_task_status(user_id, "t1", "quarantined")
    store.set_device_task_status("q-07", "t2", "quarantined")
    store.set_device_task_status("q-09", "t2", "running")


def _in_order(devices: list[Device], sort: str, descending: bool) -> list[str]:
    """``devices``' ids as a page orders them: by ``sort`` (no value last either way),
    ties by id in the same direction."""
    valued = [d for d in devices if getattr(d, sort) is not None]
    valued.sort(key=lambda d: (getattr(d, sort), d.user_id), reverse=descending)
    rest = sorted((d for d in devices if getattr(d, sort) is None), key=lambda d: d.user_id)
    return [d.user_id for d in valued] + [d.user_id for d in (rest[::-1] if descending else rest)]


FILTERS: list[tuple[dict[str, object], Callable[[Device], bool]]] = [
    ({"sensors": ("camera",)}, lambda d: "camera" in d.sensors),
    (
        {"sensors": ("camera",), "numbers": (("data_qnt", ">", 3.0),)},
        lambda d: "camera" in d.sensors and (d.data_qnt or 0) > 3,
    ),
    (
        {"sensors": ("gps",), "attributes": (("location", "=", "lab"),)},
        lambda d: "gps" in d.sensors and d.extra["location"] == "lab",
    ),
    ({"attributes": (("location", "!=", "lab"),)}, lambda d: d.extra["location"] != "lab"),
    (
        {"attributes": (("battery", ">=", 30.0),), "words": ("q-3",)},
        lambda d: d.extra["battery"] >= 30,
    ),
    ({"task_statuses": ("quarantined",)}, lambda d: d.user_id in ("q-07", "q-08")),
    ({"tasks": ("t1", "t2")}, lambda d: d.user_id == "q-07"),
]


@pytest.mark.parametrize("sort", DEVICE_SORT_KEYS)
def test_every_plan_of_a_page_gives_the_same_order_and_total(store: Store, sort: str) -> None:
    # Prepare: the expected pages from the records themselves. Small pages on the first
    # rows walk the sort key's index, later ones collect the matches and sort them
    # (sql_device_query's choice by the total): both must agree with the records.
    _forty(store)
    records = store.list_devices()

    for fields, wanted in FILTERS:
        matching = [d for d in records if wanted(d)]
        for descending in (False, True):
            expected = _in_order(matching, sort, descending)
            for limit, offset in ((3, 0), (3, 3), (5, 15), (50, 0)):
                # Execute
                page = store.query_devices(
                    DeviceQuery(
                        **fields,  # type: ignore[arg-type]
                        sort=sort,
                        descending=descending,
                        limit=limit,
                        offset=offset,
                    )
                )

                # Assert
                case = (fields, descending, limit, offset)
                assert page.total == len(expected), case
                assert [d.user_id for d in page.items] == expected[offset : offset + limit], case
