"""Notifications have one meaning per kind and are read by their kind (issue 15).

Before: a device's report on a task was a ``device`` notification like a change of
its record, so every report dropped the task manager's cached attributes and offers of
that device; and the task manager took any notification whose bytes held ``"device"``
for a device's (a task named ``device`` was never seen to change on other replicas).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cloud_harness import Cloud, create_bundle_task, running_cloud, task_manager_replica

from agata.bus.bus import Delivery
from agata.cloud.services.task_manager import TaskManager
from agata.protocol.notifications import (
    NOTIFICATIONS_TOPIC,
    DeviceChanged,
    DeviceTaskReported,
    MetricRecorded,
    TaskChanged,
    encode_notification,
    parse_notification,
)


async def offers(cloud: Cloud, user_id: str = "pi-1") -> list[dict[str, Any]]:
    response = await cloud.op("rpc_exec_client_requesting_task", {"user_id": user_id})
    assert response.status_code == 200, response.text
    value: list[dict[str, Any]] = response.json()
    return value


async def register(cloud: Cloud, user_id: str = "pi-1", data_qnt: int = 100) -> None:
    body = {"user_id": user_id, "data_qnt": data_qnt}
    assert (await cloud.op("rpc_exec_update_user_info", body)).status_code == 200


async def held_task(cloud: Cloud, task_id: str) -> None:
    await create_bundle_task(
        cloud, task_id, server_arguments=["1", "--hold"], selection_criteria="data_qnt > 50"
    )
    started = await cloud.op("rpc_exec_start_server_task", {"task_id": task_id})
    assert started.status_code == 200, started.text


def task_manager(cloud: Cloud) -> TaskManager:
    return next(s for s in cloud.node._running if isinstance(s, TaskManager))


async def seen_by_all(cloud: Cloud) -> None:
    """Wait until the notifications sent so far reached the subscribers: a marker sent
    after them arrives (deliveries to one subscriber keep their order)."""
    arrived = asyncio.Event()

    async def on_marker(delivery: Delivery) -> None:
        notification = parse_notification(delivery.body)
        if isinstance(notification, DeviceChanged) and notification.user_id == "marker":
            arrived.set()

    subscription = await cloud.node.bus.subscribe(NOTIFICATIONS_TOPIC, on_marker)
    try:
        marker = encode_notification(DeviceChanged(user_id="marker"))
        await cloud.node.bus.broadcast(NOTIFICATIONS_TOPIC, marker)
        await asyncio.wait_for(arrived.wait(), 5)
        await asyncio.sleep(0.05)  # the other subscribers' handlers of the marker ran
    finally:
        await subscription.cancel()


async def test_a_devices_report_keeps_its_cached_attributes_and_offers(cloud: Cloud) -> None:
    # Prepare: the device polled, so its attributes and matches are cached
    await held_task(cloud, "t1")
    await register(cloud)
    assert [o["ID"] for o in await offers(cloud)] == ["t1"]
    manager = task_manager(cloud)
    cached = manager._device_cache["pi-1"][1]

    # Execute: it reports progress, as it does several times a round
    body = {"user_id": "pi-1", "task_id": "t1", "status": "running"}
    assert (await cloud.op("rpc_exec_report_device_task", body)).status_code == 200
    await seen_by_all(cloud)

    # Assert: nothing of the device's record changed, so nothing cached of it ended
    # (before: both were dropped by every report)
    assert manager._device_cache["pi-1"][1] is cached
    assert manager.offers.matches("pi-1", cached) == ("t1",)
    # ... while a change of its record still ends both at once
    await register(cloud, data_qnt=10)
    assert "pi-1" not in manager._device_cache or manager._device_cache["pi-1"][1] != cached
    assert await offers(cloud) == []
    await cloud.op("rpc_exec_stop_server_task", {"task_id": "t1"})


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Cloud]:
    """A cloud with a second task-manager replica on the same bus and store."""
    async with running_cloud(tmp_path) as cloud, task_manager_replica(cloud):
        yield cloud


async def test_a_task_named_device_is_seen_to_change_on_every_replica(replicas: Cloud) -> None:
    cloud = replicas
    await held_task(cloud, "device")
    await register(cloud)

    async def both() -> list[list[Any]]:
        """Two requests: one answered by each replica (round robin)."""
        return [[(o["ID"], o["client_argv"]) for o in await offers(cloud)] for _ in "ab"]

    cached = await both()
    await cloud.op("rpc_exec_update_task", {"task_id": "device", "client_arguments": "--x 1"})
    after_update = await both()
    await cloud.op("rpc_exec_stop_server_task", {"task_id": "device"})
    after_stop = await both()

    assert cached == [[("device", [])]] * 2
    assert after_update == [[("device", ["--x", "1"])]] * 2  # before: one replica's stale
    assert after_stop == [[], []]


async def test_the_operator_stream_names_each_meaning(cloud: Cloud) -> None:
    """A record change is a ``device`` event, a report a ``device_task`` event."""
    await held_task(cloud, "t1")
    await register(cloud)
    events: list[str] = []

    async def read() -> None:
        async with cloud.http.stream("GET", "/api/stream", headers=cloud.auth) as response:
            async for line in response.aiter_lines():
                if line.startswith("event: device"):
                    events.append(line)

    reader = asyncio.create_task(read())
    try:
        await asyncio.sleep(0.2)  # the stream is open
        body = {"user_id": "pi-1", "task_id": "t1", "status": "running"}
        assert (await cloud.op("rpc_exec_report_device_task", body)).status_code == 200
        await register(cloud, data_qnt=99)
        for _ in range(200):
            if len(events) >= 2:
                break
            await asyncio.sleep(0.02)
    finally:
        reader.cancel()
        await cloud.op("rpc_exec_stop_server_task", {"task_id": "t1"})

    assert events == ["event: device_task", "event: device"]


def test_a_notification_is_sent_with_the_fields_its_producer_gave() -> None:
    sent = encode_notification(TaskChanged(task_id="t1", running=False, state="stopped"))
    report = encode_notification(
        DeviceTaskReported(user_id="pi-1", task_id="t1", status="failed", reason="")
    )
    metric = encode_notification(
        MetricRecorded(task_id="t1", round=None, source="pi-1", metrics={"acc": 0.5})
    )

    assert sent == b'{"kind":"task","task_id":"t1","running":false,"state":"stopped"}'
    assert report == (
        b'{"kind":"device_task","user_id":"pi-1","task_id":"t1","status":"failed","reason":""}'
    )
    assert metric == (
        b'{"kind":"metric","task_id":"t1","round":null,"source":"pi-1","metrics":{"acc":0.5}}'
    )


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"kind":"nope","task_id":"t1"}', b'{"kind":"task"}', b'{"x":1}'],
)
def test_what_is_not_a_notification_of_a_known_kind_is_ignored(body: bytes) -> None:
    assert parse_notification(body) is None


def test_a_newer_clouds_fields_are_kept() -> None:
    parsed = parse_notification(b'{"kind":"task","task_id":"t1","running":true,"run":3}')

    assert isinstance(parsed, TaskChanged)
    assert encode_notification(parsed) == b'{"kind":"task","task_id":"t1","running":true,"run":3}'
