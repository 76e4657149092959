"""The start of a task (issue 17, dispatch): devices are told as soon as the server side
is spawned, and never before it is (a client that connects must find a process to talk
to, even if it still has to retry until that process listens)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from cloud_harness import Cloud, create_bundle_task
from edge.conftest import pid_alive

from agata.bus.bus import Delivery
from agata.cloud.services.notifier import Notifier
from agata.protocol.notifications import Notification, TaskChanged
from agata.protocol.operations import NOTIFICATIONS_TOPIC
from agata.store.store import TaskState


async def test_the_running_notice_follows_the_spawn_and_the_pgid_is_still_recorded(
    cloud: Cloud,
) -> None:
    # Prepare: a task whose server holds; every notification is checked on arrival
    await create_bundle_task(cloud, "t-order", server_arguments=["1", "--hold"])
    seen: list[dict[str, Any]] = []

    async def on_notice(delivery: Delivery) -> None:
        message = json.loads(delivery.body)
        if message.get("kind") == "task" and message.get("running"):
            records = list(cloud.node.data_dir.rglob("task_t-order/server.pid.json"))
            pgid = json.loads(records[0].read_text())["pgid"] if records else None
            alive = pgid is not None and pid_alive(pgid)
            stored = cloud.node.store.get_task("t-order")
            seen.append({"alive": alive, "running": stored.running})

    subscription = await cloud.node.bus.subscribe(NOTIFICATIONS_TOPIC, on_notice)
    try:
        # Execute
        started = await cloud.op("rpc_exec_start_server_task", {"task_id": "t-order"})
        assert started.status_code == 200, started.text
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
    finally:
        await subscription.cancel()

    # Assert: at the notice the server side ran and the store offered the task; the
    # pgid was written after it
    assert seen == [{"alive": True, "running": True}]
    task = cloud.node.store.get_task("t-order")
    assert task.running and task.server_pid is not None
    assert pid_alive(task.server_pid)
    await cloud.op("rpc_exec_stop_server_task", {"task_id": "t-order"})


async def test_a_stop_recorded_at_the_notice_is_not_written_back_to_running(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pgid is recorded after the notice: a stop another replica records in between
    (on amqp:// the notice is an await) must stay; the start must not resurrect it."""
    await create_bundle_task(cloud, "t-race", server_arguments=["1", "--hold"])
    real_notify = Notifier.notify

    async def notify(self: Notifier, notification: Notification) -> None:
        if (
            isinstance(notification, TaskChanged)
            and notification.task_id == "t-race"
            and notification.running
        ):
            cloud.node.store.set_task_state(
                "t-race", running=False, state=TaskState.STOPPED, reason="stopped elsewhere"
            )
        await real_notify(self, notification)

    monkeypatch.setattr(Notifier, "notify", notify)

    started = await cloud.op("rpc_exec_start_server_task", {"task_id": "t-race"})

    assert started.status_code == 200, started.text
    task = cloud.node.store.get_task("t-race")
    assert not task.running and task.state_reason == "stopped elsewhere"
