"""Task requests answered from the offer cache: every change that alters an offer is
seen by the very next request, on every task-manager replica, and the answer is the
one computed afresh."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cloud_harness import CLIENT_PY, Cloud, create_bundle_task, running_cloud, task_manager_replica

from agata.cloud.services.views import offer_view

# A server side that ends (Finished) once the file named by its argument exists.
SERVER_UNTIL_FILE = """
import os, sys, time
from agata.runtime import TaskReporter
r = TaskReporter()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
r.finished()
"""


async def offers(cloud: Cloud, user_id: str = "pi-1") -> list[dict[str, Any]]:
    response = await cloud.op("rpc_exec_client_requesting_task", {"user_id": user_id})
    assert response.status_code == 200, response.text
    value: list[dict[str, Any]] = response.json()
    return value


async def report(cloud: Cloud, user_id: str = "pi-1", data_qnt: int = 100) -> None:
    body = {"user_id": user_id, "data_qnt": data_qnt, "sensors": ["camera"]}
    response = await cloud.op("rpc_exec_update_user_info", body)
    assert response.status_code == 200, response.text


async def start(cloud: Cloud, task_id: str) -> None:
    response = await cloud.op("rpc_exec_start_server_task", {"task_id": task_id})
    assert response.status_code == 200, response.text


async def held_task(cloud: Cloud, task_id: str, **fields: object) -> None:
    await create_bundle_task(
        cloud, task_id, server_arguments=["1", "--hold"], selection_criteria="data_qnt > 50",
        **fields,
    )  # fmt: skip
    await start(cloud, task_id)


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Cloud]:
    """A cloud whose task manager has a second replica on the same bus and store: task
    requests and changes go to one or the other in turn."""
    async with running_cloud(tmp_path) as cloud, task_manager_replica(cloud):
        yield cloud


async def test_the_cached_answer_is_the_one_computed_afresh(cloud: Cloud) -> None:
    await held_task(cloud, "t1", client_arguments=["--lr", "0.1"], tags=["digits"])
    await held_task(cloud, "t2")
    await report(cloud)

    first = await cloud.op("rpc_exec_client_requesting_task", {"user_id": "pi-1"})
    second = await cloud.op("rpc_exec_client_requesting_task", {"user_id": "pi-1"})

    expected = [offer_view(cloud.node.store.get_task(t)) for t in ("t1", "t2")]
    assert first.content == second.content
    assert first.json() == json.loads(json.dumps(expected))
    for task_id in ("t1", "t2"):
        await cloud.op("rpc_exec_stop_server_task", {"task_id": task_id})


async def test_task_changes_are_seen_by_the_next_request(cloud: Cloud) -> None:
    await held_task(cloud, "t1")
    await report(cloud)
    assert [o["client_argv"] for o in await offers(cloud)] == [[]]

    await cloud.op("rpc_exec_update_task", {"task_id": "t1", "client_arguments": "--epochs 2"})
    after_update = await offers(cloud)
    files = [("files", ("client.py", (CLIENT_PY + "# v2\n").encode()))]
    await cloud.http.post("/api/tasks/t1/files", files=files, headers=cloud.auth)
    after_files = await offers(cloud)
    await cloud.op("rpc_exec_stop_server_task", {"task_id": "t1"})
    after_stop = await offers(cloud)
    await start(cloud, "t1")
    after_start = await offers(cloud)
    await cloud.op("rpc_exec_stop_server_task", {"task_id": "t1"})

    assert after_update[0]["client_argv"] == ["--epochs", "2"]
    assert after_files[0]["version"] == after_update[0]["version"] + 1
    assert after_files[0]["files"] != after_update[0]["files"]
    assert after_stop == []
    assert [o["ID"] for o in after_start] == ["t1"]


async def test_a_device_change_is_seen_by_the_next_request(cloud: Cloud) -> None:
    await held_task(cloud, "t1")
    seen = []
    for data_qnt in (100, 10, 100):
        await report(cloud, data_qnt=data_qnt)
        seen.append([o["ID"] for o in await offers(cloud)])
        seen.append([o["ID"] for o in await offers(cloud)])  # the cached answer
    await cloud.op("rpc_exec_stop_server_task", {"task_id": "t1"})

    assert seen == [["t1"], ["t1"], [], [], ["t1"], ["t1"]]


async def test_a_server_side_that_ends_is_not_offered_any_more(
    cloud: Cloud, shared_dir: Path
) -> None:
    """The end comes from the server process, not from an operation: only the "task"
    notification tells the task manager."""
    flag = shared_dir / "finish-now"
    await create_bundle_task(cloud, "t1", server_arguments=[str(flag)])
    files = [("files", ("server.py", SERVER_UNTIL_FILE.encode()))]
    await cloud.http.post("/api/tasks/t1/files", files=files, headers=cloud.auth)
    await start(cloud, "t1")
    await report(cloud)
    before = await offers(cloud)

    flag.touch()
    for _ in range(500):
        task = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "t1"})).json()
        if not task["running"]:
            break
        await asyncio.sleep(0.01)
    after = await offers(cloud)

    assert [o["ID"] for o in before] == ["t1"]
    assert not task["running"]
    assert after == []


async def test_every_replica_sees_a_change_made_on_another_at_once(replicas: Cloud) -> None:
    cloud = replicas
    await held_task(cloud, "t1")
    await report(cloud)
    await report(cloud, "pi-2")

    async def both(user_id: str = "pi-1") -> list[list[Any]]:
        """Two requests: one answered by each replica (round robin)."""
        return [[(o["ID"], o["client_argv"]) for o in await offers(cloud, user_id)] for _ in "ab"]

    cached = await both()
    await cloud.op("rpc_exec_update_task", {"task_id": "t1", "client_arguments": "--x 1"})
    after_update = await both()
    await report(cloud, data_qnt=1)
    after_device = await both()
    other_device = await both("pi-2")
    await cloud.op("rpc_exec_stop_server_task", {"task_id": "t1"})
    after_stop = await both("pi-2")

    assert cached == [[("t1", [])]] * 2
    assert after_update == [[("t1", ["--x", "1"])]] * 2
    assert after_device == [[], []]
    assert other_device == [[("t1", ["--x", "1"])]] * 2
    assert after_stop == [[], []]


async def test_a_change_no_notification_told_of_is_seen_after_the_reread(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost notification (a broker outage): the periodic re-read of the running tasks
    finds them changed and ends the cached offers."""
    import agata.cloud.services.task_manager as task_manager

    monkeypatch.setattr(task_manager, "RUNNING_CACHE_SECONDS", 0.05)
    await held_task(cloud, "t1")
    await report(cloud)
    before = await offers(cloud)

    cloud.node.store.update_task("t1", client_arguments=["--quiet"])  # no notification
    await asyncio.sleep(0.1)
    after = await offers(cloud)
    await cloud.op("rpc_exec_stop_server_task", {"task_id": "t1"})

    assert before[0]["client_argv"] == []
    assert after[0]["client_argv"] == ["--quiet"]
