"""``agata bench bus``: round-trip latency and RPC/s of each bus, beside its bare limit.

A ping service and a client on one bus (``memory://``: one bus in this process; amqp:
two connections to the broker), sequential calls and ``in_flight`` at once. The limits
are measured in the same run on the same event loop (:mod:`agata.bench.bare`): a bare
asyncio request/reply loop for ``memory://``, bare aio-pika request/reply through the
same broker for ``amqp://``. Limit and figure are taken in interleaved rounds (the
machine may be shared); each is the median of its rounds, and the note gives the
spread of the per-round ratios.

Targets (issue 17), sequential RPC/s: memory:// >= 0.3x bare asyncio, amqp:// >= 0.9x
bare aio-pika; amqp:// also at 16 in flight. memory:// at 16 in flight has no target:
there the bare loop answers a whole batch of ready futures per loop pass, which is no
limit an RPC with a task per request can approach.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from agata.bench.bare import aio_pika_round_trips, asyncio_round_trips, round_trips
from agata.bench.report import BenchReport
from agata.bus import RpcClient, Service, create_bus

MEMORY_TARGET = 0.3
AMQP_TARGET = 0.9
#: Interleaved rounds of limit and figure (each with calls / ROUNDS calls, and at
#: least ROUND_SECONDS long: the bare loop needs several times the calls of the bus).
ROUNDS = 5
ROUND_SECONDS = 0.3


class Ping(BaseModel):
    n: int = 0


async def _measure(url: str, calls: int, in_flight: int, min_seconds: float) -> dict[str, float]:
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

    async def call(n: int) -> Any:
        return await client.call(queue, {"n": n})

    try:
        return await round_trips(call, calls, in_flight, min_seconds)
    finally:
        await service.stop()
        await server_bus.close()
        await client_bus.close()


async def _with_limit(
    ours: Callable[[], Awaitable[dict[str, float]]],
    bare: Callable[[], Awaitable[dict[str, float]]],
    rounds: int,
) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]]]:
    """Interleaved rounds of the bare limit and ours (the order alternating), so a load
    that comes and goes on a shared machine weighs on both alike. Returns the medians
    of ours, of the limit, and each figure's per-round ratios."""
    mine: list[dict[str, float]] = []
    limits: list[dict[str, float]] = []
    for i in range(rounds):
        if i % 2:
            mine.append(await ours())
            limits.append(await bare())
        else:
            limits.append(await bare())
            mine.append(await ours())
    keys = list(mine[0])
    ratios = {k: [m[k] / b[k] for m, b in zip(mine, limits, strict=True) if b[k]] for k in keys}
    return (
        {k: statistics.median(m[k] for m in mine) for k in keys},
        {k: statistics.median(b[k] for b in limits) for k in keys},
        ratios,
    )


def _add(
    report: BenchReport,
    kind: str,
    limit_name: str,
    target: float,
    in_flight: int,
    data: tuple[dict[str, float], dict[str, float], dict[str, list[float]]],
    verdict_in_flight: bool,
) -> None:
    ours, limit, ratios = data
    for key, label in (
        ("sequential_rps", "sequential"),
        ("concurrent_rps", f"{in_flight} in flight"),
    ):
        spread = ratios[key]
        note = f"{limit_name}; {len(spread)} rounds, ratios {min(spread):.2f}-{max(spread):.2f}"
        verdict = key == "sequential_rps" or verdict_in_flight
        report.ratio(
            f"{kind} {label}", ours[key], limit[key], "RPC/s", limit_name=limit_name,
            at_least=target if verdict else None,
            note=note if verdict else note + "; no target",
        )  # fmt: skip
    report.ratio(
        f"{kind} p50", ours["p50_ms"], limit["p50_ms"], "ms", limit_name=limit_name,
        note=f"p99 {ours['p99_ms']:.3f} ms (bare {limit['p99_ms']:.3f} ms)",
    )  # fmt: skip


def run_bus_bench(amqp_url: str | None, calls: int = 20_000, in_flight: int = 16) -> BenchReport:
    """Measure memory:// and, when a URL is given, amqp://, each beside its bare limit."""
    report = BenchReport("bus: request/reply round trips")
    report.context = {"calls": calls, "in_flight": in_flight}
    try:
        import uvloop

        runner: Any = uvloop.run
        report.context["loop"] = "uvloop"
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        runner = asyncio.run
        report.context["loop"] = "asyncio"

    per_round = max(500, calls // ROUNDS)
    memory = runner(
        _with_limit(
            lambda: _measure("memory://", per_round, in_flight, ROUND_SECONDS),
            lambda: asyncio_round_trips(per_round, in_flight, ROUND_SECONDS),
            ROUNDS,
        )
    )
    _add(report, "memory://", "bare asyncio", MEMORY_TARGET, in_flight, memory, False)
    report.context["memory"] = {"ours": memory[0], "limit": memory[1], "ratios": memory[2]}
    if amqp_url:
        amqp_calls = max(400, calls // 5 // ROUNDS)
        amqp = runner(
            _with_limit(
                lambda: _measure(amqp_url, amqp_calls, in_flight, ROUND_SECONDS),
                lambda: aio_pika_round_trips(amqp_url, amqp_calls, in_flight, ROUND_SECONDS),
                ROUNDS,
            )
        )
        _add(report, "amqp://", "bare aio-pika", AMQP_TARGET, in_flight, amqp, True)
        report.context["amqp"] = {"ours": amqp[0], "limit": amqp[1], "ratios": amqp[2]}
    else:
        report.add("amqp://", None, "", note="skipped: pass --amqp-url amqp://...")
    return report
