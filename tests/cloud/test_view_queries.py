"""Listings make a fixed number of queries however many rows they show: the device
registry's device list and the task manager's task views, on a real SQLite store."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from agata.bus import create_bus
from agata.bus.bus import Bus
from agata.cloud.bundles.artifact_store import ArtifactStore
from agata.cloud.bundles.bundle_store import BundleStore
from agata.cloud.services.device_registry import DeviceRegistry
from agata.cloud.services.task_manager import TaskManager
from agata.protocol import operations as ops
from agata.store.sql_store import SqlStore
from agata.store.store import NewTask
from agata.store.store_factory import create_store

ROWS = 12


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    bus = create_bus("memory://")
    await bus.connect()
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    """ROWS tasks and ROWS devices; each device runs every task, with metrics."""
    store = create_store(f"sqlite:///{tmp_path / 'agata.db'}")
    assert isinstance(store, SqlStore)
    for i in range(ROWS):
        store.create_task(NewTask(f"t{i:02}", "127.0.0.1", 9, "u", "p"))
        store.upsert_device(f"d{i:02}", data_qnt=i)
    for i in range(ROWS):
        for j in range(3):
            store.set_device_task_status(f"d{j:02}", f"t{i:02}", "running")
        store.add_metric(f"t{i:02}", 1, "server", {"acc": 0.5})
        store.add_metric(f"t{i:02}", 2, "d00", {"acc": 0.9})
    try:
        yield store
    finally:
        store.close()


@contextmanager
def counted(store: SqlStore) -> Iterator[list[str]]:
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", before)


async def call(service: Any, operation: str, body: dict[str, Any]) -> Any:
    reply = json.loads(await service.handle(operation, json.dumps(body).encode()))
    assert reply["status_code"] == 200, reply
    return reply["return"]


async def test_the_device_list_is_three_queries_for_any_fleet(bus: Bus, store: SqlStore) -> None:
    registry = DeviceRegistry(bus, store, register_events=False)

    with counted(store) as selects:
        devices = await call(registry, ops.LIST_DEVICES, {})

    assert len(devices) == ROWS
    assert len(selects) == 3, selects  # devices, their sensors, their task states


async def test_task_views_are_a_fixed_number_of_queries(
    bus: Bus, store: SqlStore, tmp_path: Path
) -> None:
    manager = TaskManager(
        bus,
        store,
        BundleStore(tmp_path / "tasks"),
        tmp_path / "work",
        artifacts=ArtifactStore(tmp_path / "artifacts"),
    )

    with counted(store) as selects:
        tasks = await call(manager, ops.LIST_TASKS, {})
    with counted(store) as page_selects:
        page = await call(manager, ops.QUERY_TASKS, {"limit": 5})

    assert len(tasks) == ROWS and page["total"] == ROWS
    assert all(t["devices_running"] == ["d00", "d01", "d02"] for t in tasks)
    assert len(selects) <= 6, selects  # 3 for the tasks, 3 for their runs and devices
    assert len(page_selects) <= 6, page_selects
