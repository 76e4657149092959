"""A bundle declaring requirements.txt: its server side runs in an environment built
from the cloud's configured wheelhouse; a refused or unsatisfiable one fails the start
with the reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cloud_harness import Cloud, create_bundle_task, running_cloud
from runtime.test_environments import make_wheel

SERVER_PY = """
import agatatoy
from agata.runtime import TaskReporter
r = TaskReporter()
r.send_print("toy says " + agatatoy.VALUE)
r.finished()
"""


async def upload(cloud: Cloud, requirements: str) -> None:
    await create_bundle_task(cloud, "t1")
    files = [
        ("files", ("server.py", SERVER_PY.encode())),
        ("files", ("client.py", b"")),
        ("files", ("requirements.txt", requirements.encode())),
    ]
    reply = await cloud.http.post("/api/tasks/t1/files", files=files, headers=cloud.auth)
    assert reply.status_code == 200, reply.text


async def test_the_server_side_runs_in_its_environment(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels)
    flags = {"env_find_links": str(wheels), "env_no_index": True}
    async with running_cloud(tmp_path, **flags) as cloud:
        await upload(cloud, "agatatoy==1.0\n")

        started = await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})
        assert started.status_code == 200, started.text
        for _ in range(400):
            task = cloud.node.store.get_task("t1")
            if not task.running:
                break
            await asyncio.sleep(0.05)

        assert task.state == "finished", task.state_reason
        assert "toy says agatatoy" in [line.text for line in cloud.node.store.tail_logs("t1")]


async def test_a_refused_or_unsatisfiable_requirement_fails_the_start(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels)
    flags = {"env_find_links": str(wheels), "env_no_index": True}
    async with running_cloud(tmp_path, **flags) as cloud:
        await upload(cloud, "https://example.org/agatatoy-1.0.whl\n")
        refused = await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})
        reason_refused = cloud.node.store.get_task("t1").state_reason

        files = [("files", ("requirements.txt", b"agatanope==9\n"))]
        await cloud.http.post("/api/tasks/t1/files", files=files, headers=cloud.auth)
        failed = await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})
        reason_failed = cloud.node.store.get_task("t1").state_reason

    assert refused.status_code == 400
    assert "options, URLs and local paths are refused" in reason_refused
    assert failed.status_code == 500
    assert "agatanope" in reason_failed
