"""A real cloud, enrolled devices, simple real task bundles and a running agent."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cloud_harness import Cloud, running_cloud

from agata.edge.agent import Agent
from agata.edge.credential import enroll_device
from agata.edge.device_info import DeviceInfo, DeviceSource
from agata.runtime.sandbox import default_task_dir
from agata.settings import Settings, load_settings

SERVER_PY = """
import time
from agata.runtime import TaskReporter
TaskReporter()
time.sleep(600)
"""

_PRELUDE = """
import os, signal, subprocess, sys, time
from agata.runtime import TaskReporter
work = sys.argv[1]
r = TaskReporter()
"""

CLIENTS: dict[str, str] = {
    # runs until stopped, after one round of metrics
    "hold": "r.send_metrics(1, acc=0.5, loss=0.9)\ntime.sleep(600)",
    # forks children until something stops it (a pids limit)
    "forks": (
        "for _ in range(10_000):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "time.sleep(600)"
    ),
    # reports an error and would go on if nobody stopped it
    "error": "r.send_error(RuntimeError('broken on purpose'))\ntime.sleep(600)",
    "finish": "r.send_metrics(1, acc=0.9)\nr.finished()",
    "crash": "sys.exit(3)",
    "stubborn": "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)",
    # leaves a grandchild in its process group
    "grandchild": (
        "p = subprocess.Popen(['sleep', '300'])\n"
        "open(os.path.join(work, 'grandchild.pid'), 'w').write(str(p.pid))\n"
        "time.sleep(600)"
    ),
    # leaves its session: a setsid grandchild that writes its pid to the work folder
    "setsid": (
        "p = subprocess.Popen(['setsid', 'sleep', '300'])\n"
        "open(os.path.join(work, 'grandchild.pid'), 'w').write(str(p.pid))\n"
        "time.sleep(600)"
    ),
    # floods stdout with lines that are not the protocol, then finishes
    "flood": (
        "for i in range(20000):\n"
        "    print('noise', i, '{not json', flush=False)\n"
        'print(\'{"type": "model", "round": "abc"}\')\n'
        "r.finished()"
    ),
}


def client_code(kind: str) -> str:
    if kind == "syntax":
        return "def broken(:\n    pass\n"
    return _PRELUDE + textwrap.dedent(CLIENTS[kind]) + "\n"


async def create_task(
    cloud: Cloud,
    task_id: str,
    client: str,
    *,
    start: bool = True,
    criteria: str | None = None,
    client_arguments: list[str] | None = None,
    extra_files: dict[str, bytes] | None = None,
    limits: dict[str, float] | None = None,
) -> None:
    body: dict[str, Any] = {
        "task_id": task_id,
        "host": "127.0.0.1",
        "port": 8080,
        "username": f"user-{task_id}",
        "password": f"pass-{task_id}",
        "files_paths": [],
    }
    if criteria is not None:
        body["selection_criteria"] = criteria
    if client_arguments is not None:
        body["client_arguments"] = client_arguments
    if limits is not None:
        body["limits"] = limits
    response = await cloud.op("rpc_exec_create_task", body)
    assert response.status_code == 200, response.text
    files = [
        ("files", ("server.py", SERVER_PY.encode())),
        ("files", ("client.py", client_code(client).encode())),
    ]
    files += [("files", (name, data)) for name, data in (extra_files or {}).items()]
    response = await cloud.http.post(f"/api/tasks/{task_id}/files", files=files, headers=cloud.auth)
    assert response.status_code == 200, response.text
    if start:
        await start_task(cloud, task_id)


async def start_task(cloud: Cloud, task_id: str) -> None:
    response = await cloud.op("rpc_exec_start_server_task", {"task_id": task_id})
    assert response.status_code == 200, response.text


async def stop_task(cloud: Cloud, task_id: str) -> None:
    response = await cloud.op("rpc_exec_stop_server_task", {"task_id": task_id})
    assert response.status_code == 200, response.text


async def enroll(cloud: Cloud, user_id: str, data_dir: Path) -> str:
    response = await cloud.op("rpc_exec_create_enrollment_token", {})
    assert response.status_code == 200, response.text
    token = response.json()["enrollment_token"]
    return await enroll_device(cloud.node.url, user_id, token, data_dir)


async def device_states(cloud: Cloud, task_id: str) -> dict[str, tuple[str, str]]:
    response = await cloud.op("rpc_exec_get_task_devices", {"task_id": task_id})
    assert response.status_code == 200, response.text
    return {s["user_id"]: (s["status"], s["reason"]) for s in response.json()["states"]}


async def eventually(
    check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01, what: str = ""
) -> Any:
    """Wait until ``check()`` (sync or async) returns something true; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or check}")
        await asyncio.sleep(interval)


def work_folder(data_dir: Path, task_id: str) -> Path:
    """The work folder an agent on ``data_dir`` gives a client side (with the default
    settings): its own under the task dir when the agent runs as root (task user)."""
    if os.geteuid() == 0:
        return default_task_dir(data_dir / "edge") / "client" / f"task_{task_id}" / "work"
    return data_dir / "edge" / "work" / f"task_{task_id}"


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def edge_settings(data_dir: Path, cloud_url: str, **flags: Any) -> Settings:
    values = {
        "data_dir": data_dir,
        "cloud_url": cloud_url,
        "request_interval": 30.0,  # long: dispatch must come from push, not the poll
        "quarantine_seconds": 600.0,
        "download_attempts": 2,
        **flags,
    }
    return load_settings(flags=values, environ={})


@dataclass
class Events:
    """What the agent's ``on_event`` received."""

    items: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, function: str, event: str, **fields: Any) -> None:
        self.items.append((function, event, fields))

    def find(self, function: str, event: str, **match: Any) -> list[dict[str, Any]]:
        return [
            f
            for fn, ev, f in self.items
            if fn == function and ev == event and all(f.get(k) == v for k, v in match.items())
        ]


@asynccontextmanager
async def running_agent(agent: Agent, *, wait_push: bool = True) -> AsyncIterator[Agent]:
    """Run ``agent`` in the background; shut it down (and check it ended) on exit."""
    task = asyncio.create_task(agent.run())
    try:
        if wait_push:
            await eventually(
                lambda: agent.push is not None and agent.push.connected.is_set() and agent.polls,
                what="agent connected and polled",
            )
        yield agent
    finally:
        agent.shutdown()
        await asyncio.wait_for(task, 15)


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path) as running:
        yield running


@dataclass
class Device:
    """An enrolled device ``dev1`` with its own data folder."""

    cloud: Cloud
    data_dir: Path
    credential: str
    events: Events = field(default_factory=Events)
    user_id: str = "dev1"

    def agent(
        self, device: DeviceInfo | DeviceSource | None = None, grace: float = 1.0, **flags: Any
    ) -> Agent:
        settings = edge_settings(self.data_dir, self.cloud.node.url, **flags)
        return Agent(
            settings,
            device or DeviceInfo(self.user_id, data_qnt=100, sensors=("camera",)),
            credential=self.credential,
            on_event=self.events,
            grace=grace,
        )


@pytest.fixture
async def device(cloud: Cloud, tmp_path: Path) -> Device:
    data_dir = tmp_path / "device"
    return Device(cloud, data_dir, await enroll(cloud, "dev1", data_dir))
