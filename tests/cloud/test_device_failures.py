"""Device failures on the cloud: the overview's recent failures, a quarantine's expiry,
a failed client side's output lines, and a new bundle version ending quarantines."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cloud_harness import CLIENT_PY, Cloud, create_bundle_task, running_cloud


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path) as running:
        await create_bundle_task(running, "t1", server_arguments=["1", "--hold"])
        await running.op("rpc_exec_start_server_task", {"task_id": "t1"})
        for user_id in ("d1", "d2"):
            await running.op("rpc_exec_update_user_info", {"user_id": user_id})
        yield running


async def ok(cloud: Cloud, operation: str, body: dict[str, Any]) -> Any:
    response = await cloud.op(operation, body)
    assert response.status_code == 200, response.text
    return response.json()


async def report(cloud: Cloud, user_id: str, status: str, **fields: Any) -> Any:
    body = {"user_id": user_id, "task_id": "t1", "status": status, **fields}
    return await ok(cloud, "rpc_exec_report_device_task", body)


async def test_the_overview_lists_device_failures_and_quarantines_with_their_end(
    cloud: Cloud,
) -> None:
    # Prepare / Execute: d1 fails and is quarantined for an hour; d2 only fails
    until = time.time() + 3600
    await report(cloud, "d1", "running")
    await report(cloud, "d1", "failed", reason="exited with code 1: boom")
    await report(
        cloud, "d1", "quarantined", reason="exited with code 1: boom", quarantined_until=until
    )
    await report(cloud, "d2", "running")
    await report(cloud, "d2", "failed", reason="exited with code 2: bang")

    overview = await ok(cloud, "rpc_exec_get_overview", {})
    record = await ok(cloud, "rpc_exec_get_user_info", {"user_id": "d1"})

    # Assert: both, oldest first, with the device, status and expiry
    failures = [(f["user_id"], f["status"], f["reason"]) for f in overview["recent_failures"]]
    assert failures == [
        ("d1", "quarantined", "exited with code 1: boom"),
        ("d2", "failed", "exited with code 2: bang"),
    ]
    first = overview["recent_failures"][0]
    assert abs(datetime.fromisoformat(first["quarantined_until"]).timestamp() - until) < 0.01
    [task] = record["tasks"]
    assert task["quarantined_until"] == first["quarantined_until"]


async def test_a_failed_reports_lines_are_the_devices_log_lines_and_bad_ones_are_refused(
    cloud: Cloud,
) -> None:
    lines = [{"stream": "stderr", "text": f"line {i}"} for i in range(3)]
    await report(cloud, "d1", "running")

    # Execute: a report with lines, and reports whose lines are not acceptable
    await report(cloud, "d1", "failed", reason="x", log_lines=lines)
    too_many = await cloud.op(
        "rpc_exec_report_device_task",
        {"user_id": "d1", "task_id": "t1", "status": "failed", "log_lines": lines * 100},
    )
    bad_stream = await cloud.op(
        "rpc_exec_report_device_task",
        {
            "user_id": "d1",
            "task_id": "t1",
            "status": "failed",
            "log_lines": [{"stream": "server", "text": "forged"}],
        },
    )
    logs = await ok(cloud, "rpc_exec_get_task_logs", {"task_id": "t1", "limit": 1000})

    # Assert: stored with the device as source; the others refused with the reason
    mine = [(x["source"], x["stream"], x["text"]) for x in logs if x["source"] != "server"]
    assert mine == [
        ("d1", "stderr", "line 0"),
        ("d1", "stderr", "line 1"),
        ("d1", "stderr", "line 2"),
    ]
    assert too_many.status_code == 400 and "log_lines" in too_many.text
    assert bad_stream.status_code == 400 and "stream" in bad_stream.text


async def test_a_new_bundle_version_ends_the_tasks_quarantines(cloud: Cloud) -> None:
    await report(cloud, "d1", "running")
    await report(cloud, "d1", "quarantined", reason="boom", quarantined_until=time.time() + 60)

    # Execute: the operator uploads a new client
    response = await cloud.http.post(
        "/api/tasks/t1/files",
        files=[("files", ("client.py", (CLIENT_PY + "\n# v2\n").encode()))],
        headers=cloud.auth,
    )
    assert response.status_code == 200, response.text

    # Assert
    record = await ok(cloud, "rpc_exec_get_user_info", {"user_id": "d1"})
    assert [t["status"] for t in record["tasks"]] == []
