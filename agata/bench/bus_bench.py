"""``agata bench bus``: round-trip latency and RPC/s of each bus."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel

from agata.bench.report import Report, percentile
from agata.bus import RpcClient, Service, create_bus


class Ping(BaseModel):
    n: int = 0


async def _measure(url: str, calls: int, in_flight: int) -> dict[str, Any]:
    server_bus, client_bus = create_bus(url), create_bus(url)
    await server_bus.connect()
    if url.startswith("memory"):
        client_bus = server_bus  # one process, one bus
    else:
        await client_bus.connect()
    service = Service(server_bus, "bench", prefetch=max(64, in_flight * 2))
    queue = f"bench_ping_{time.monotonic_ns()}"

    async def ping(req: Ping) -> int:
        return req.n

    service.add_operation(queue, Ping, ping)
    await service.start()
    client = RpcClient(client_bus, timeout=10)
    try:
        for i in range(min(200, calls)):  # warm up
            await client.call(queue, {"n": i})
        latencies = []
        started = time.perf_counter()
        for i in range(calls):
            t0 = time.perf_counter()
            await client.call(queue, {"n": i})
            latencies.append(time.perf_counter() - t0)
        sequential = calls / (time.perf_counter() - started)

        next_n = iter(range(calls))

        async def worker() -> None:
            for i in next_n:
                await client.call(queue, {"n": i})

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        concurrent = calls / (time.perf_counter() - started)
    finally:
        await service.stop()
        await server_bus.close()
        await client_bus.close()
    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "sequential_rps": sequential,
        "concurrent_rps": concurrent,
    }


def run_bus_bench(amqp_url: str | None, calls: int = 20_000, in_flight: int = 16) -> Report:
    """Measure memory:// and, when a URL is given, amqp://."""
    report = Report("bus: request/reply round trips")
    report.context = {"calls": calls, "in_flight": in_flight}
    try:
        import uvloop

        runner: Any = uvloop.run
        report.context["loop"] = "uvloop"
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        runner = asyncio.run
        report.context["loop"] = "asyncio"

    memory = runner(_measure("memory://", calls, in_flight))
    report.add("memory:// sequential", memory["sequential_rps"], "RPC/s", at_least=20_000)
    report.add("memory:// p50", memory["p50_ms"], "ms", at_most=0.1)
    report.add("memory:// p99", memory["p99_ms"], "ms")
    report.add(f"memory:// {in_flight} in flight", memory["concurrent_rps"], "RPC/s")
    if amqp_url:
        amqp = runner(_measure(amqp_url, max(2000, calls // 5), in_flight))
        report.add("amqp:// sequential", amqp["sequential_rps"], "RPC/s")
        report.add("amqp:// p50", amqp["p50_ms"], "ms", at_most=2)
        report.add("amqp:// p99", amqp["p99_ms"], "ms")
        report.add(f"amqp:// {in_flight} in flight", amqp["concurrent_rps"], "RPC/s", at_least=2000)
    else:
        report.add("amqp://", None, "", note="skipped: pass --amqp-url amqp://...")
    return report
