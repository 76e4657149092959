"""A task's own limits: create/update fields, shown in its record, applied to its server
side, named in the reason when one ends it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cloud_harness import Cloud, create_bundle_task, running_cloud

from agata.runtime.sandbox import TaskSandbox
from agata.store.store import Task

FORK_BOMB = """
import os, time
for _ in range(10_000):
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
"""


async def ended(cloud: Cloud, task_id: str) -> Task:
    for _ in range(400):  # at most 20 s
        task = cloud.node.store.get_task(task_id)
        if not task.running:
            return task
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} still running")


async def test_limits_are_optional_fields_of_create_and_update(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        await create_bundle_task(cloud, "t1")  # the seed's shape, no limits
        await create_bundle_task(cloud, "t2", limits={"memory_mb": 256, "pids": 64})

        first = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "t1"})).json()
        second = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "t2"})).json()
        updated = await cloud.op(
            "rpc_exec_update_task", {"task_id": "t1", "limits": {"wall_seconds": 30}}
        )

        assert first["limits"] == {}
        assert second["limits"] == {"memory_mb": 256, "pids": 64}
        assert updated.status_code == 200
        assert cloud.node.store.get_task("t1").limits == {"wall_seconds": 30}


@pytest.mark.parametrize(
    ("limits", "why"),
    [({"pids": 0}, "pids"), ({"gpus": 2}, "gpus"), ({"memory_mb": "lots"}, "memory_mb")],
)
async def test_bad_limits_are_refused_with_the_field(
    tmp_path: Path, limits: dict[str, object], why: str
) -> None:
    async with running_cloud(tmp_path) as cloud:
        body = {"task_id": "t1", "host": "127.0.0.1", "port": 8080, "limits": limits}
        reply = await cloud.op("rpc_exec_create_task", body)

        assert reply.status_code == 400
        assert why in reply.text


async def test_the_wall_time_of_a_task_ends_its_server_side(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        await create_bundle_task(cloud, "t1", limits={"wall_seconds": 0.5})
        started = await cloud.op(
            "rpc_exec_start_server_task", {"task_id": "t1", "arguments": ["3", "--hold"]}
        )
        assert started.status_code == 200, started.text

        task = await ended(cloud, "t1")

        assert task.state == "failed"
        assert task.state_reason == "wall time limit of 0.5 s exceeded"


async def test_a_fork_bomb_ends_with_the_tasks_pids_limit_named(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        if "pids" not in _sandbox(cloud).containment.enforced:
            pytest.skip("no pids cgroup on this machine")
        await create_bundle_task(cloud, "t1", limits={"pids": 30})
        files = [("files", ("server.py", FORK_BOMB.encode()))]
        reply = await cloud.http.post("/api/tasks/t1/files", files=files, headers=cloud.auth)
        assert reply.status_code == 200
        started = await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})
        assert started.status_code == 200, started.text

        task = await ended(cloud, "t1")
        health = await cloud.http.get("/healthz")

        assert task.state == "failed"
        assert "process limit of 30 reached" in task.state_reason
        assert health.status_code == 200  # the cloud stayed responsive


def _sandbox(cloud: Cloud) -> TaskSandbox:
    """The task manager's sandbox (the cloud node runs it in this process)."""
    for service in cloud.node._running:
        tasks = getattr(service, "server_tasks", None)
        if tasks is not None and tasks.sandbox is not None:
            return tasks.sandbox  # type: ignore[no-any-return]
    raise AssertionError("no task manager with a sandbox")
