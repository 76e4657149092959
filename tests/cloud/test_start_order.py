"""The start of a task (issue 17, dispatch): devices are told as soon as the server side
is spawned, and never before it is (a client that connects must find a process to talk
to, even if it still has to retry until that process listens)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from cloud_harness import Cloud, create_bundle_task
from edge.conftest import pid_alive

from agata.bus.bus import Delivery
from agata.cloud.services.notifier import Notifier
from agata.cloud.services.task_manager import TaskManager
from agata.protocol.notifications import Notification, TaskChanged
from agata.protocol.operations import NOTIFICATIONS_TOPIC
from agata.runtime.sandbox import TaskSandbox
from agata.runtime.task_user import COPY_RECORD
from agata.store.store import TaskState

contained = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="a task user and cgroups need root"
)


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


def sandbox_of(cloud: Cloud) -> TaskSandbox:
    manager = next(s for s in cloud.node._running if isinstance(s, TaskManager))
    assert manager.server_tasks.sandbox is not None
    return manager.server_tasks.sandbox


async def wait_for(condition: Any, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


@contained
async def test_the_bundle_copy_is_made_at_upload_and_the_start_runs_in_it(
    cloud: Cloud,
) -> None:
    # Prepare: an upload; the server side's copy is made in the background
    sandbox = sandbox_of(cloud)
    await create_bundle_task(cloud, "t-copy", server_arguments=["1", "--hold"])
    area = sandbox.task_dir / "server" / "task_t-copy"
    await wait_for(lambda: (area / COPY_RECORD).exists(), "the copy made ahead")
    made = (area / "bundle" / "server.py").stat().st_ino

    # Execute
    started = await cloud.op("rpc_exec_start_server_task", {"task_id": "t-copy"})
    assert started.status_code == 200, started.text

    # Assert: the server side runs in that copy (not copied again at the start)
    pgid = cloud.node.store.get_task("t-copy").server_pid
    assert pgid is not None
    copy = (area / "bundle").resolve()
    await wait_for(lambda: Path(f"/proc/{pgid}/cwd").resolve() == copy, "exec")
    assert (area / "bundle" / "server.py").stat().st_ino == made
    await cloud.op("rpc_exec_stop_server_task", {"task_id": "t-copy"})
