"""``agata bench cloud``: the cloud's steps of experiment 1 through the HTTP gateway.

A real cloud (services + gateway on a loopback port, SQLite in a temporary folder) in
this process, on ``memory://`` and, when given, on RabbitMQ. A client in the same
process times, warm, each operation as a caller sees it (HTTP round trip):

- step 1 ``rpc_exec_create_task`` (operator),
- step 2 ``rpc_exec_start_server_task`` (operator; the server side is spawned before
  the reply -- a trivial ``server.py`` that waits to be stopped),
- step 3 ``rpc_exec_update_user_info`` (device credential),
- step 4 ``rpc_exec_client_requesting_task`` (device credential, with running tasks),
- step 5 the download of a task's bundle: every file, one GET after the other, as the
  agent does (the digits bundle when found, else a small bundle),
- and ``rpc_exec_get_task_by_id`` for comparison.

Each step is printed beside its same-run limit: the p50 round trip of a bare FastAPI
endpoint (:func:`~agata.bench.bare.bare_fastapi`) on the same event loop through the
same kind of client (times the number of files for step 5). No ratio target is set for
these steps yet: issue 5's absolute ones (p50 <= 5 ms on memory://, <= 15 ms on
amqp://) are kept in docs/benchmarks.md's history only.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from agata.bench.bare import bare_fastapi
from agata.bench.report import BenchReport, percentile

SERVER_PY = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(60)
"""
CLIENT_PY = "from agata.runtime import TaskReporter\nTaskReporter().finished()\n"


def _bundle() -> list[tuple[str, bytes]]:
    """The digits bundle's files (a realistic step 5) with a server that only waits."""
    files = {"server.py": SERVER_PY.encode(), "client.py": CLIENT_PY.encode()}
    try:
        from agata.demo.harness import bundle_files, find_example_task

        for name, data in bundle_files(find_example_task("digits")):
            if name not in ("server.py",):
                files.setdefault(name, data)
    except Exception:  # the examples are not installed: the small bundle will do
        pass
    return sorted(files.items())


class _Timer:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    async def time(self, name: str, call: Callable[[], Awaitable[httpx.Response]]) -> Any:
        t0 = time.perf_counter()
        response = await call()
        elapsed = time.perf_counter() - t0
        if response.status_code != 200:
            raise RuntimeError(f"{name}: {response.status_code} {response.text[:200]}")
        self.samples.setdefault(name, []).append(elapsed)
        return response


async def _measure(bus_url: str, samples: int) -> dict[str, list[float]]:
    from agata.cloud.cloud_node import CloudNode
    from agata.cloud.credentials.tokens import OPERATOR_PREFIX, hash_token, new_token
    from agata.settings import load_settings

    timer = _Timer()
    starts = min(samples, 60)  # each start spawns a process
    with tempfile.TemporaryDirectory(prefix="agata-bench-") as tmp:
        settings = load_settings(
            flags={
                "data_dir": Path(tmp),
                "bus_url": bus_url,
                "gateway_port": 0,
                "server_grace_seconds": 1.0,
            },
            environ={},
        )
        node = CloudNode(settings)
        await node.start()
        token = new_token(OPERATOR_PREFIX)
        node.store.add_operator_token("bench", hash_token(token))
        operator = {"Authorization": f"Bearer {token}"}
        files = _bundle()
        try:
            async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:

                async def op(name: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
                    response = await http.post(f"/{name}", json=body, headers=headers)
                    response.raise_for_status()
                    return response.json()

                enrollment = await op("rpc_exec_create_enrollment_token", {}, operator)
                enroll = {
                    "user_id": "bench-device",
                    "enrollment_token": enrollment["enrollment_token"],
                }
                enrolled = await http.post("/api/devices/enroll", json=enroll)
                device = {"Authorization": f"Bearer {enrolled.json()['credential']}"}
                info = {"user_id": "bench-device", "data_qnt": 100, "sensors": ["camera"]}

                def create(task_id: str) -> Callable[[], Awaitable[httpx.Response]]:
                    body = {"task_id": task_id, "host": "127.0.0.1", "port": 8080,
                            "username": "", "password": "", "files_paths": [],
                            "selection_criteria": "data_qnt > 50"}  # fmt: skip
                    return lambda: http.post("/rpc_exec_create_task", json=body, headers=operator)

                # Warm up every path once (imports, first connection, first queries).
                await timer.time("warmup", create("warm"))
                await op("rpc_exec_update_user_info", info, device)
                timer.samples.clear()

                for i in range(samples):
                    await timer.time("create", create(f"t{i}"))
                for i in range(starts):
                    upload = [("files", (name, data)) for name, data in files]
                    r = await http.post(f"/api/tasks/t{i}/files", files=upload, headers=operator)
                    r.raise_for_status()
                for i in range(starts):
                    body = {"task_id": f"t{i}"}
                    await timer.time(
                        "start",
                        lambda body=body: http.post(  # type: ignore[misc]
                            "/rpc_exec_start_server_task", json=body, headers=operator
                        ),
                    )
                for _ in range(samples):
                    await timer.time(
                        "update_device",
                        lambda: http.post("/rpc_exec_update_user_info", json=info, headers=device),
                    )
                ask = {"user_id": "bench-device"}
                for _ in range(samples):
                    await timer.time(
                        "request",
                        lambda: http.post(
                            "/rpc_exec_client_requesting_task", json=ask, headers=device
                        ),
                    )
                for i in range(samples):
                    body = {"task_id": f"t{i % starts}"}
                    await timer.time(
                        "get",
                        lambda body=body: http.post(  # type: ignore[misc]
                            "/rpc_exec_get_task_by_id", json=body, headers=operator
                        ),
                    )
                names = [name for name, _ in files]
                for i in range(samples):
                    t0 = time.perf_counter()
                    for name in names:
                        r = await http.get(f"/download/t{i % starts}/{name}", headers=device)
                        r.raise_for_status()
                    timer.samples.setdefault("download", []).append(time.perf_counter() - t0)
                timer.samples["_files"] = [float(len(names))]
                for i in range(starts):
                    await op("rpc_exec_stop_server_task", {"task_id": f"t{i}"}, operator)
            # The limit: a bare FastAPI endpoint on this loop, the same kind of client.
            async with (
                bare_fastapi("/bare", b"null") as bare_url,
                httpx.AsyncClient(base_url=bare_url, timeout=30) as bare,
            ):
                ask = {"user_id": "bench-device"}
                for i in range(samples + 20):
                    t0 = time.perf_counter()
                    (await bare.post("/bare", json=ask, headers=device)).raise_for_status()
                    if i >= 20:  # warm
                        timer.samples.setdefault("bare", []).append(time.perf_counter() - t0)
        finally:
            await node.stop()
    return timer.samples


STEPS = [
    ("create", "step 1 register task (create)"),
    ("start", "step 2 start task on cloud"),
    ("update_device", "step 3 update device info"),
    ("request", "step 4 request task"),
    ("download", "step 5 download task"),
    ("get", "get task by id"),
]


def _report(kind: str, url: str, samples: dict[str, list[float]]) -> BenchReport:
    report = BenchReport(f"cloud steps through the HTTP gateway, {kind}://")
    report.context = {"bus": url.split("@")[-1], "samples": {k: len(v) for k, v in samples.items()}}
    bare = percentile(samples["bare"], 50) * 1000
    for key, name in STEPS:
        values = samples.get(key, [])
        if not values:
            report.add(name, None, "ms", note="not measured")
            continue
        note = f"p95 {percentile(values, 95) * 1000:.2f} ms, n={len(values)}"
        limit = bare
        if key == "download":
            files = int(samples["_files"][0])
            note += f", {files} files (limit: {files} bare round trips)"
            limit = bare * files
        report.ratio(
            f"{name} p50", percentile(values, 50) * 1000, limit, "ms",
            limit_name="bare FastAPI round trip", note=note,
        )  # fmt: skip
    return report


def run_cloud_bench(amqp_url: str | None, samples: int = 200) -> list[BenchReport]:
    """Measure on memory:// and, when a URL is given, on amqp://."""
    reports = [_report("memory", "memory://", asyncio.run(_measure("memory://", samples)))]
    if amqp_url:
        reports.append(_report("amqp", amqp_url, asyncio.run(_measure(amqp_url, samples))))
    return reports
