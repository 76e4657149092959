"""A real cloud (services + gateway on a loopback port) for tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from agata.cloud.cloud_node import CloudNode
from agata.cloud.services.task_manager import TaskManager
from agata.settings import load_settings

SERVER_PY = """
import sys, time
from agata.runtime import TaskReporter
r = TaskReporter()
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
for n in range(1, rounds + 1):
    r.send_metrics(n, acc=0.5 + n / 10, loss=1.0 / n)
if "--hold" in sys.argv:
    time.sleep(120)
r.finished()
"""

CLIENT_PY = """
from agata.runtime import TaskReporter
r = TaskReporter()
r.finished()
"""


@dataclass
class Cloud:
    node: CloudNode
    http: httpx.AsyncClient
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def op(
        self, name: str, body: dict[str, object], token: str | None = "op"
    ) -> httpx.Response:
        headers = (
            self.auth if token == "op" else ({"Authorization": f"Bearer {token}"} if token else {})
        )
        return await self.http.post(f"/{name}", json=body, headers=headers)


def cloud_settings(tmp_path: Path, **flags: object) -> object:
    return load_settings(
        flags={"data_dir": tmp_path / "cloud", "gateway_port": 0, **flags}, environ={}
    )


@asynccontextmanager
async def running_cloud(tmp_path: Path, **flags: object) -> AsyncIterator[Cloud]:
    """A cloud on memory:// with SQLite in ``tmp_path``; yields it with an operator token."""
    node = CloudNode(cloud_settings(tmp_path, **{"server_grace_seconds": 2.0, **flags}))  # type: ignore[arg-type]
    await node.start()
    token = await asyncio.to_thread(node.ensure_operator_token)
    assert token
    try:
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            yield Cloud(node, http, token)
    finally:
        await node.stop()


@asynccontextmanager
async def task_manager_replica(cloud: Cloud) -> AsyncIterator[TaskManager]:
    """A second task manager, started, on the cloud's bus, store, bundles and artifacts:
    task requests and changes go to one replica or the other in turn."""
    node = cloud.node
    second = TaskManager(
        node.bus,
        node.store,
        node.bundles,
        node.data_dir / "work",
        artifacts=node.artifacts,
        grace=2.0,
    )
    await second.start()
    try:
        yield second
    finally:
        await second.stop()


async def create_bundle_task(cloud: Cloud, task_id: str = "t1", **fields: object) -> None:
    body = {
        "task_id": task_id,
        "host": "127.0.0.1",
        "port": 8080,
        "username": "u",
        "password": "p",
        "files_paths": [],
        **fields,
    }
    response = await cloud.op("rpc_exec_create_task", body)
    assert response.status_code == 200, response.text
    files = [
        ("files", ("server.py", SERVER_PY.encode())),
        ("files", ("client.py", CLIENT_PY.encode())),
    ]
    response = await cloud.http.post(f"/api/tasks/{task_id}/files", files=files, headers=cloud.auth)
    assert response.status_code == 200, response.text
