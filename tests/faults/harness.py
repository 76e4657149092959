"""What the fault tests share: a real cloud in a process of its own, a TCP proxy that
plays a broker going away, task bundles, and looks into /proc.

The cloud runs as ``python -m agata cloud run`` (the command an operator runs), so its
memory, its process group and its log are its own; the test talks to it over HTTP only.
Everything here is asynchronous: the proxy lives on the test's event loop, so nothing may
block it while the cloud talks through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cloud_harness import CLIENT_PY
from helpers import free_port

T = TypeVar("T")


class Proxy:
    """A TCP proxy in front of the shared test broker: ``cut`` makes the broker "go
    away" for this proxy's clients only (listener closed, every connection dropped),
    ``resume`` lets them in again on the same port. The broker itself is never stopped:
    other tests share it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()
        self.server = None

    async def resume(self) -> None:
        await self.start()  # same port


@dataclass
class CloudProcess:
    process: asyncio.subprocess.Process
    data_dir: Path
    port: int
    log: Path
    http: httpx.AsyncClient

    @property
    def pid(self) -> int:
        return self.process.pid

    async def op(self, name: str, body: dict[str, Any], timeout: float = 15) -> httpx.Response:
        return await self.http.post(f"/{name}", json=body, timeout=timeout)

    async def ok(self, name: str, body: dict[str, Any]) -> Any:
        response = await self.op(name, body)
        assert response.status_code == 200, f"{name}: {response.status_code} {response.text}"
        return response.json()

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@asynccontextmanager
async def cloud_process(
    data_dir: Path, *, bus: str | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[CloudProcess]:
    """``agata cloud run`` on a free loopback port; SIGTERM (then SIGKILL) at the end."""
    port = free_port()
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    log = data_dir.parent / f"cloud-{port}.log"
    argv = [sys.executable, "-m", "agata", "cloud", "run", "--data-dir", str(data_dir)]
    argv += ["--port", str(port), *(["--bus", bus] if bus else [])]
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=out,
            stderr=out,
            env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=15) as http:

            async def healthy() -> bool:
                if process.returncode is not None:
                    raise AssertionError(f"the cloud exited: {log.read_text()[-2000:]}")
                try:
                    return (await http.get("/healthz", timeout=1)).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(healthy, timeout=30, what="the cloud answers /healthz")
            token_file = data_dir / "operator-token"
            await eventually(token_file.exists, what="the first operator token")
            token = token_file.read_text().strip()
            http.headers["Authorization"] = f"Bearer {token}"
            yield CloudProcess(process, data_dir, port, log, http)
    finally:
        await end_process(process)


async def end_process(process: asyncio.subprocess.Process, timeout: float = 15) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def eventually(
    check: Callable[[], Awaitable[T] | T], *, timeout: float = 10, what: str = "condition"
) -> T:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        await asyncio.sleep(0.05)


async def add_task(
    cloud: CloudProcess,
    task_id: str,
    server_py: str,
    server_arguments: list[str] | None = None,
) -> None:
    """Create a task whose bundle holds ``server_py`` (and a trivial client)."""
    await cloud.ok(
        "rpc_exec_create_task",
        {
            "task_id": task_id,
            "host": "127.0.0.1",
            "port": 9,
            "username": "u",
            "password": "p",
            "files_paths": [],
            "server_arguments": server_arguments or [],
        },
    )
    files = [
        ("files", ("server.py", server_py.encode())),
        ("files", ("client.py", CLIENT_PY.encode())),
    ]
    response = await cloud.http.post(f"/api/tasks/{task_id}/files", files=files)
    assert response.status_code == 200, response.text


async def task_ended(cloud: CloudProcess, task_id: str) -> dict[str, Any] | None:
    task: dict[str, Any] = await cloud.ok("rpc_exec_get_task_by_id", {"task_id": task_id})
    return None if task["running"] else task


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def live_processes(marker: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
