"""``agata bench devices``: how many devices one cloud serves asking for work.

A real cloud in this process (``memory://`` or the given RabbitMQ; SQLite in a temporary
folder) with ``--tasks`` running tasks, each with its own selection criteria (their
server sides are trivial processes that wait), and ``--devices`` enrolled devices with
varied attributes. The load is ``rpc_exec_client_requesting_task`` from every device in
turn, each with its own credential, as their agents send it.

The load generator is Debian's ``wrk`` (C, one thread per core; a generated Lua script
sets method, body and headers per request). Without ``wrk`` a Python load generator
(httpx, asyncio) runs instead and the report says so: it shares the cores it measures
and understates the cloud.

The limit, measured in the same run: a bare FastAPI endpoint (:mod:`agata.bench.bare`)
loaded by the same wrk command and script, answering the bytes of a real reply. Every
device asks once first (a fleet polling every 10 s finds its credential and attributes
cached); then wrk runs in rounds ordered bare, cloud, cloud, bare. Target (issue 17):
task requests/s >= 0.5x the bare endpoint's. The CPU time this process spends per
request is printed beside the bare endpoint's.

Derived figure: devices served at the default poll interval = requests/s * interval
(the push stream adds no polls; devices poll once per interval when idle).

Setup goes straight to the store (devices, credential hashes): only the request path
is measured.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import statistics
import tempfile
import time
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
SENSORS = ("camera", "microphone", "gps", "accelerometer")
POLL_INTERVAL = 10.0
REQUEST_PATH = "/rpc_exec_client_requesting_task"
#: Issue 17: task requests/s >= this times a bare FastAPI endpoint's.
TARGET_RATIO = 0.5
#: wrk on the bare endpoint before the measured rounds.
WARMUP_SECONDS = 1

LUA = """
local devices = {
%s
}
local n = #devices
local i = 0
request = function()
  i = (i %% n) + 1
  local d = devices[i]
  return wrk.format("POST", "%s",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. d[2]},
    '{"user_id":"' .. d[1] .. '"}')
end
"""


def _criteria(i: int) -> str:
    sensor = SENSORS[i % len(SENSORS)]
    return f'(data_qnt > {i * 5}) and ("{sensor}" in sensors)'


async def _setup(
    node: Any, http: httpx.AsyncClient, devices: int, tasks: int
) -> list[tuple[str, str]]:
    from agata.cloud.credentials.tokens import DEVICE_PREFIX, hash_token, new_token

    rng = random.Random(7)
    credentials = []
    for d in range(devices):
        user_id = f"sim-{d:05d}"
        sensors = [s for s in SENSORS if rng.random() < 0.5]
        await node.async_store.upsert_device(user_id, data_qnt=rng.randint(0, 200), sensors=sensors)
        credential = new_token(DEVICE_PREFIX)
        await node.async_store.set_device_credential(user_id, hash_token(credential))
        credentials.append((user_id, credential))
    for t in range(tasks):
        body = {"task_id": f"load-{t:02d}", "host": "127.0.0.1", "port": 20000 + t,
                "username": "", "password": "", "files_paths": [],
                "selection_criteria": _criteria(t)}  # fmt: skip
        (await http.post("/rpc_exec_create_task", json=body)).raise_for_status()
        files = [("files", ("server.py", SERVER_PY.encode())), ("files", ("client.py", b""))]
        (await http.post(f"/api/tasks/load-{t:02d}/files", files=files)).raise_for_status()
        start = {"task_id": f"load-{t:02d}"}
        (await http.post("/rpc_exec_start_server_task", json=start)).raise_for_status()
    return credentials


def _parse_wrk(text: str) -> dict[str, Any]:
    def duration(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    result: dict[str, Any] = {"raw": text}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        result["rps"] = float(m.group(1))
    for q in ("50", "90", "99"):
        if m := re.search(rf"^\s+{q}%\s+(\S+)", text, re.M):
            result[f"p{q}_ms"] = duration(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    result["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = int(m.group(1)) if m else 0
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        errors += sum(int(g) for g in m.groups())
    result["errors"] = errors
    return result


async def _wrk(
    url: str, credentials: list[tuple[str, str]], seconds: int, connections: int
) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        rows = ",\n".join(f'  {{"{u}", "{c}"}}' for u, c in credentials)
        script.write(LUA % (rows, REQUEST_PATH))
    try:
        process = await asyncio.create_subprocess_exec(
            "wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
            "-s", script.name, url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await process.communicate()
    finally:
        Path(script.name).unlink(missing_ok=True)  # noqa: ASYNC240 - a local temp file
    return _parse_wrk(out.decode(errors="replace"))


async def _wrk_beside_bare(
    url: str, credentials: list[tuple[str, str]], seconds: int, connections: int, reply: bytes
) -> dict[str, Any]:
    """wrk on the cloud and on a bare FastAPI endpoint (same script, same settings, same
    event loop, answering the bytes of a real reply), in rounds ordered bare, cloud,
    cloud, bare, so a load that comes and goes on a shared machine weighs on both."""
    half = max(1, seconds // 2)
    cloud: list[dict[str, Any]] = []
    bare: list[dict[str, Any]] = []
    async with bare_fastapi(REQUEST_PATH, reply) as bare_url:
        # Warm both: a polling fleet finds its credentials (six polls) and its
        # attributes (three polls) cached, so every device asks once before the rounds.
        await _wrk(bare_url, credentials, WARMUP_SECONDS, connections)
        await _each_device_once(url, credentials, connections)
        for target, into in ((bare_url, bare), (url, cloud), (url, cloud), (bare_url, bare)):
            cpu = time.process_time()  # this process serves both (wrk is another)
            measured = await _wrk(target, credentials, half, connections)
            measured["cpu_us"] = (time.process_time() - cpu) * 1e6 / max(1, measured["requests"])
            into.append(measured)
    result = _merge(cloud)
    result["generator"] = "wrk"
    result["bare"] = _merge(bare)
    if result["bare"]["errors"]:
        raise RuntimeError(f"the bare endpoint answered {result['bare']['errors']} errors")
    result["rounds"] = {
        "cloud": [r.get("rps") for r in cloud],
        "bare": [r.get("rps") for r in bare],
    }
    return result


async def _each_device_once(url: str, credentials: list[tuple[str, str]], connections: int) -> None:
    pending = iter(credentials)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:

        async def worker() -> None:
            for user_id, credential in pending:
                response = await http.post(
                    REQUEST_PATH,
                    json={"user_id": user_id},
                    headers={"Authorization": f"Bearer {credential}"},
                )
                response.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(connections)))


def _merge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of wrk as one: requests/s over all, the latencies' mean (wrk gives no
    samples), errors summed."""
    merged: dict[str, Any] = {
        "rps": statistics.mean(r["rps"] for r in rounds if "rps" in r) if rounds else None,
        "requests": sum(r.get("requests", 0) for r in rounds),
        "errors": sum(r.get("errors", 0) for r in rounds),
        "raw": [r.get("raw", "") for r in rounds],
    }
    for key in ("p50_ms", "p90_ms", "p99_ms", "cpu_us"):
        values = [r[key] for r in rounds if key in r]
        merged[key] = statistics.mean(values) if values else None
    return merged


async def _httpx_load(
    url: str, credentials: list[tuple[str, str]], seconds: int, connections: int
) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    counter = iter(range(10**12))

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            user_id, credential = credentials[next(counter) % len(credentials)]
            t0 = time.perf_counter()
            try:
                r = await http.post(
                    "/rpc_exec_client_requesting_task",
                    json={"user_id": user_id},
                    headers={"Authorization": f"Bearer {credential}"},
                )
                if r.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=connections)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=5) as http:
        await asyncio.gather(*(worker(http) for _ in range(connections)))
    elapsed = time.monotonic() - started
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "requests": len(latencies),
        "errors": errors,
    }


async def _measure(
    bus_url: str, devices: int, tasks: int, seconds: int, connections: int
) -> dict[str, Any]:
    from agata.cloud.cloud_node import CloudNode
    from agata.cloud.credentials.tokens import OPERATOR_PREFIX, hash_token, new_token
    from agata.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="agata-bench-") as tmp:
        settings = load_settings(
            flags={"data_dir": Path(tmp), "bus_url": bus_url, "gateway_port": 0,
                   "server_grace_seconds": 1.0, "register_events": True},
            environ={},
        )  # fmt: skip
        node = CloudNode(settings)
        await node.start()
        token = new_token(OPERATOR_PREFIX)
        await node.async_store.add_operator_token("bench", hash_token(token))
        try:
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=30) as http:
                credentials = await _setup(node, http, devices, tasks)
                user_id, credential = credentials[0]
                offers = await http.post(
                    "/rpc_exec_client_requesting_task",
                    json={"user_id": user_id},
                    headers={"Authorization": f"Bearer {credential}"},
                )
                if shutil.which("wrk"):
                    result = await _wrk_beside_bare(
                        node.url, credentials, seconds, connections, offers.content
                    )
                else:
                    result = await _httpx_load(node.url, credentials, seconds, connections)
                    result["generator"] = "httpx (Python, same machine: understates the cloud)"
                result["offers_device0"] = len(offers.json())
                for t in range(tasks):
                    await http.post("/rpc_exec_stop_server_task", json={"task_id": f"load-{t:02d}"})
        finally:
            await node.stop()
    return result


def run_devices_bench(
    devices: int = 1000,
    tasks: int = 20,
    seconds: int = 10,
    connections: int = 4,
    amqp_url: str | None = None,
) -> BenchReport:
    bus_url = amqp_url or "memory://"
    kind = bus_url.split("://")[0]
    data = asyncio.run(_measure(bus_url, devices, tasks, seconds, connections))
    report = BenchReport(f"task requests: {devices} devices, {tasks} running tasks, {kind}://")
    report.context = {
        "devices": devices, "tasks": tasks, "seconds": seconds, "connections": connections,
        "generator": data["generator"], "requests": data.get("requests"),
    }  # fmt: skip
    note = f"{data['generator']}, {connections} connections"
    rps = data.get("rps")
    bare = data.get("bare")
    if bare is not None:
        rounds = data["rounds"]
        spread = ", ".join(
            f"{c:,.0f}/{b:,.0f}"
            for c, b in zip(rounds["cloud"], rounds["bare"][::-1], strict=False)
        )
        # The target is memory://'s: on amqp:// each request also crosses the broker,
        # which the bare endpoint does not (see agata bench bus for that hop's limit).
        report.ratio(
            "task requests/s", rps, bare["rps"], "req/s", limit_name="bare FastAPI",
            at_least=TARGET_RATIO if kind == "memory" else None,
            note=f"{note}; rounds cloud/bare: {spread}"
            + ("" if kind == "memory" else "; no target: the broker hop is not in the limit"),
        )  # fmt: skip
        report.ratio(
            "CPU per task request", data.get("cpu_us"), bare["cpu_us"], "us",
            limit_name="bare", note="of this process (the cloud); less sensitive to others' load",
        )  # fmt: skip
        report.ratio("request p50", data.get("p50_ms"), bare["p50_ms"], "ms", limit_name="bare")
        report.ratio("request p99", data.get("p99_ms"), bare["p99_ms"], "ms", limit_name="bare")
    else:
        report.add("task requests/s", rps, "req/s", note=f"{note}; no bare limit without wrk")
        report.add("request p50", data.get("p50_ms"), "ms")
        report.add("request p99", data.get("p99_ms"), "ms")
    report.add("errors", float(data.get("errors", 0)), "", at_most=0)
    if rps:
        report.add(
            "devices served at the 10 s poll interval", rps * POLL_INTERVAL, "devices",
            note=f"requests/s * 10 s ({devices} simulated)",
        )  # fmt: skip
    return report
