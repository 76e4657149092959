"""What a device report costs and checks: the device registry on memory:// and SQLite.

A fleet reports several times a second per running task (downloading, running, one
report per round, finished), so the report is the cloud's most frequent request; its
checks must stay (unknown device or task: 404) without doing more work than needed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event

from agata.bus import create_bus
from agata.cloud.services.device_registry import DeviceRegistry
from agata.protocol import operations as ops
from agata.store.sql_store import SqlStore
from agata.store.store import NewTask
from agata.store.store_factory import create_store


@pytest.fixture
async def registry() -> AsyncIterator[DeviceRegistry]:
    bus = create_bus("memory://")
    await bus.connect()
    store = create_store("sqlite://")
    store.create_task(NewTask(task_id="t1", host="h", port=1, username="u", password="p"))
    store.set_task_state("t1", running=True, state="running")
    store.upsert_device("d1", data_qnt=10)
    try:
        yield DeviceRegistry(bus, store, register_events=False)
    finally:
        store.close()
        await bus.close()


async def report(registry: DeviceRegistry, **fields: Any) -> tuple[int, Any]:
    body = {"user_id": "d1", "task_id": "t1", "status": "running", **fields}
    reply = json.loads(await registry.handle(ops.REPORT_DEVICE_TASK, json.dumps(body).encode()))
    return reply["status_code"], reply.get("return", reply.get("exception"))


async def test_unknown_device_or_task_is_404(registry: DeviceRegistry) -> None:
    unknown_task = await report(registry, task_id="nope")
    unknown_device = await report(registry, user_id="ghost")
    downloaded_unknown_task = await report(registry, task_id="nope", status="downloaded")
    downloaded_unknown_device = await report(registry, user_id="ghost", status="downloaded")

    assert unknown_task[0] == 404 and "nope" in unknown_task[1]
    assert unknown_device[0] == 404 and "ghost" in unknown_device[1]
    assert downloaded_unknown_task[0] == 404 and "nope" in downloaded_unknown_task[1]
    assert downloaded_unknown_device[0] == 404 and "ghost" in downloaded_unknown_device[1]
    assert registry.store.list_task_devices("t1") == []


async def test_reports_record_status_metrics_and_last_seen(registry: DeviceRegistry) -> None:
    before = registry.store.get_device("d1").last_seen

    assert await report(registry, status="downloaded") == (200, None)  # accepted, not kept
    assert await report(registry, round=1, metrics={"acc": 0.5}) == (200, None)
    assert await report(registry, status="finished") == (200, None)

    states = registry.store.list_task_devices("t1")
    assert [(s.user_id, s.status.value) for s in states] == [("d1", "finished")]
    assert [(m.round, m.source, m.metrics) for m in registry.store.list_metrics("t1")] == [
        (1, "d1", {"acc": 0.5})
    ]
    assert registry.store.get_device("d1").last_seen > before


async def test_a_task_report_is_one_transaction(registry: DeviceRegistry) -> None:
    """A status report writes the status and, once per TOUCH_SECONDS, last_seen. Only
    the first report of a device on a task reads the task and the device (its scope:
    agata.cloud.services.report_scope); the next ones are trusted for SCOPE_CACHE_SECONDS."""
    store = registry.store
    assert isinstance(store, SqlStore)
    transactions: list[int] = []
    event.listen(store.engine, "begin", lambda _conn: transactions.append(1))

    await report(registry, status="downloading")  # scope (task, device), status, last_seen
    first = len(transactions)
    await report(registry, status="running")
    await report(registry, status="finished")

    assert first == 4
    assert len(transactions) == first + 2
