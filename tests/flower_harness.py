"""A real cloud, flower-app tasks and agents running real SuperLinks and SuperNodes.

Flower's processes run as AGATA's own user here (``task_user=""``): a SuperLink and a
SuperNode start Flower's other programs by name, whose interpreter must be reachable by
the task user, and this test environment's lives under ``/root`` (see
docs/flower-apps.md, "Task user").
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cloud_harness import Cloud

from agata.edge.agent import Agent
from agata.edge.credential import enroll_device
from agata.edge.device_info import DeviceInfo
from agata.settings import load_settings

EXAMPLE = Path(__file__).parents[1] / "agata" / "examples" / "tasks" / "digits-app"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def app_files(folder: Path = EXAMPLE, **replace: bytes) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".py", ".toml")}
    files.update(replace)
    return files


async def create_app_task(
    cloud: Cloud,
    task_id: str,
    files: dict[str, bytes],
    *,
    port: int,
    server_arguments: list[str] | None = None,
    client_arguments: list[str] | None = None,
    criteria: str = "",
) -> None:
    body: dict[str, Any] = {
        "task_id": task_id,
        "kind": "flower-app",
        "host": "127.0.0.1",
        "port": port,
        "username": "u",
        "password": "p",
        "selection_criteria": criteria,
        "server_arguments": server_arguments or [],
        "client_arguments": client_arguments or [],
    }
    response = await cloud.op("rpc_exec_create_task", body)
    assert response.status_code == 200, response.text
    upload = [("files", (name, data)) for name, data in files.items()]
    response = await cloud.http.post(
        f"/api/tasks/{task_id}/files", files=upload, headers=cloud.auth
    )
    assert response.status_code == 200, response.text


async def task_record(cloud: Cloud, task_id: str) -> dict[str, Any]:
    response = await cloud.op("rpc_exec_get_task_by_id", {"task_id": task_id})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.2)


async def ended(cloud: Cloud, task_id: str, timeout: float = 240.0) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        record = await task_record(cloud, task_id)
        return record if not record["running"] else None

    return dict(await eventually(done, timeout, f"task {task_id} ended"))


async def make_agent(
    cloud: Cloud, tmp_path: Path, user_id: str, *, ca_file: Path | None = None, **extra: Any
) -> Agent:
    response = await cloud.op("rpc_exec_create_enrollment_token", {})
    assert response.status_code == 200, response.text
    data_dir = tmp_path / user_id
    flags: dict[str, Any] = {"data_dir": data_dir, "cloud_url": cloud.node.url, "task_user": ""}
    if ca_file is not None:
        flags["ca_file"] = ca_file
    settings = load_settings(
        flags={**flags, "request_interval": 30.0, "quarantine_seconds": 600.0}, environ={}
    )
    credential = await enroll_device(
        cloud.node.url,
        user_id,
        response.json()["enrollment_token"],
        data_dir,
        **({"ca_file": ca_file} if ca_file else {}),
    )
    return Agent(
        settings, DeviceInfo(user_id, data_qnt=100, extra=extra), credential=credential, grace=2.0
    )


@asynccontextmanager
async def running_agents(*agents: Agent) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(agent.run()) for agent in agents]
    try:
        yield
    finally:
        for agent in agents:
            agent.shutdown()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


FLOWER_CLOUD = {"task_user": ""}
"""Flags of a cloud whose SuperLinks run as its own user (see the module docstring)."""


def flower_processes(marker: str) -> list[int]:
    """Live pids of Flower programs whose command line names ``marker``."""

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and marker in command and ("flower-" in command or "flwr" in command):
            found.append(int(entry.name))
    return found
