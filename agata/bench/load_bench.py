"""``agata bench load``: the largest fleet one cloud serves at the poll interval.

One cloud is started as a child process (``python -m agata cloud run``: ``memory://``
and SQLite in a temporary folder, or the bus and database given) with K running tasks,
and one simulated fleet (:class:`~agata.simulate.simulator.Fleet`) grows against it
from this process, step by step (500, 1000, 2000, … devices by default). At each step:

1. *ramp*: the new devices start, spread over max(one poll interval, new devices /
   ``setup_rate``) seconds, plus half a poll interval — each enrolls, reports its
   attributes, and downloads and plays every task it matches (about 16 requests per
   device, a one-off burst);
   then, if some devices are still coming on board (the cloud is behind), up to the
   ramp's length (plus the time a device takes to play its tasks) more until they all
   are (a step whose fleet is not on board by then fails);
2. *steady*: ``seconds`` of the whole fleet polling every 10 s ± 10 %.

A step passes when no request failed in either window, every device so far ran every
task it matches, and the p99 latency of the steady window is within the bound. The
bench stops at the first step that fails; the largest N is the last step that passed.

The cloud and the simulator share this machine's cores (two on the reference
machine): the cloud is one Python process (one core at most, plus RabbitMQ and
PostgreSQL when used), the simulator another. The cloud's CPU use, the simulator's, and
the simulator's event-loop lag in each steady window are reported beside the
latencies, so a step limited by the simulator rather than the cloud shows as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from agata.bench.report import BenchReport
from agata.simulate.cloud_process import CloudProcess, CloudProcesses
from agata.simulate.fleet import create_enrollment_token, set_up_tasks, tear_down_tasks
from agata.simulate.histogram import LatencyHistogram
from agata.simulate.simulator import Fleet, SimulationOptions, device_config, fleet_summary
from agata.simulate.stats import Window

__all__ = ["SETUP_RATE", "run_load_bench"]

#: New devices per second during a ramp (each makes ~15 requests in its first cycle:
#: 10 devices/s add ~150 requests/s to the fleet's polls).
SETUP_RATE = 10.0


class _CpuSampler:
    """Samples (time, cloud CPU s, own CPU s) twice a second."""

    def __init__(self, cloud: CloudProcess | CloudProcesses) -> None:
        self.cloud = cloud
        self.samples: list[tuple[float, float, float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            now = time.perf_counter()
            self.samples.append((now, self.cloud.cpu_seconds(), time.process_time()))
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def percent(self, window: Window) -> tuple[float | None, float | None]:
        """CPU % of the cloud and of this process during ``window``."""
        end = window.end if window.end is not None else time.perf_counter()
        inside = [s for s in self.samples if window.start <= s[0] <= end]
        if len(inside) < 2:
            return None, None
        (t0, c0, p0), (t1, c1, p1) = inside[0], inside[-1]
        return round(100 * (c1 - c0) / (t1 - t0), 1), round(100 * (p1 - p0) / (t1 - t0), 1)


async def _wait_on_board(fleet: Fleet, *, limit: float) -> int:
    """Until every device has come on board (its first cycle done: enrolled, reported,
    its tasks played), at most ``limit`` seconds; returns how many have not. The steady
    window must not start while a backlog of the ramp is still being served: it would
    measure that backlog, not the fleet's polls."""
    deadline = time.perf_counter() + limit
    while True:
        lagging = sum(d.on_board_at is None for d in fleet.devices)
        if lagging == 0 or time.perf_counter() >= deadline:
            return lagging
        await asyncio.sleep(0.5)


def _step_figures(
    n: int,
    ramp: Window,
    steady: Window,
    fleet: Fleet,
    sampler: _CpuSampler,
    summary: dict[str, Any],
    p99_limit_ms: float,
    lagging: int = 0,
) -> dict[str, Any]:
    s = steady.to_json()
    r = ramp.to_json()
    cloud_cpu, simulator_cpu = sampler.percent(steady)
    errors = steady.errors + ramp.errors
    kinds = dict(Counter(ramp.errors_by_kind()) + Counter(steady.errors_by_kind()))
    reasons = []
    if lagging:
        reasons.append(f"{lagging} devices still not on board when the steady window began")
    if errors:
        reasons.append(f"{errors} errors ({kinds})")
    if summary["devices_missing_tasks"]:
        reasons.append(f"{summary['devices_missing_tasks']} devices missed tasks")
    p99 = s["p99_ms"]
    if p99 is None or p99 > p99_limit_ms:
        reasons.append(f"steady p99 {p99} ms > {p99_limit_ms:g} ms")
    return {
        "devices": n,
        "ok": not reasons,
        "why_not": "; ".join(reasons),
        "ramp_s": r["window_s"],
        "on_board": summary["on_board"],
        "ramp_requests": r["count"],
        "ramp_requests_per_s": r["requests_per_s"],
        "ramp_p99_ms": r["p99_ms"],
        "steady_s": s["window_s"],
        "steady_requests": s["count"],
        "steady_requests_per_s": s["requests_per_s"],
        "steady_p50_ms": s["p50_ms"],
        "steady_p95_ms": s["p95_ms"],
        "steady_p99_ms": p99,
        "steady_max_ms": s["max_ms"],
        "steady_by_operation": {op: v["p99_ms"] for op, v in s["operations"].items()},
        "errors": errors,
        "errors_by_kind": kinds,
        "devices_missing_tasks": summary["devices_missing_tasks"],
        "cloud_cpu_percent": cloud_cpu,
        "simulator_cpu_percent": simulator_cpu,
        "simulator_loop_lag_p99_ms": fleet.lag.summary_ms()["p99_ms"],
        "peak_connections": fleet.peak_connections,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


async def run_load_bench(
    sizes: list[int],
    *,
    seconds: float = 20.0,
    poll_interval: float = 10.0,
    p99_limit_ms: float = 100.0,
    tasks: int = 4,
    bus_url: str = "memory://",
    db_url: str | None = None,
    setup_rate: float = SETUP_RATE,
    split: bool = False,
    progress: Callable[[str], Any] | None = None,
) -> BenchReport:
    """Grow the fleet through ``sizes`` until a step fails; the report holds every step."""
    sizes = sorted(set(sizes))
    kind = bus_url.split(":")[0]
    store = (db_url or "sqlite://").split(":")[0]
    where = "one process per service" if split else "cloud in its own process"
    report = BenchReport(
        f"simulated fleet: largest N polling every {poll_interval:g} s with steady "
        f"p99 <= {p99_limit_ms:g} ms ({kind}, {store}; {where})"
    )
    options = SimulationOptions(devices=max(sizes), poll_interval=poll_interval, tasks=tasks)
    steps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="agata-bench-load-") as folder:
        cloud: CloudProcess | CloudProcesses
        if split:
            cloud = CloudProcesses(Path(folder) / "cloud", bus_url=bus_url, db_url=db_url)
        else:
            cloud = CloudProcess(Path(folder) / "cloud", bus_url=bus_url, db_url=db_url)
        await cloud.start()
        sampler = _CpuSampler(cloud)
        sampler.start()
        headers = {"Authorization": f"Bearer {cloud.operator_token}"}
        try:
            async with httpx.AsyncClient(base_url=cloud.url, headers=headers, timeout=30) as op:
                fleet_tasks = await set_up_tasks(op, tasks)
                token = await create_enrollment_token(op, max(sizes))
                config = device_config(options, token)
                # Ids of this run's own: an enrolled id cannot enroll again (--db reused).
                prefix = f"sim-{secrets.token_hex(3)}"
                async with Fleet(
                    cloud.url, config, max_devices=max(sizes), id_prefix=prefix
                ) as fleet:
                    for n in sizes:
                        added = n - len(fleet.devices)
                        ramp_seconds = max(poll_interval, added / setup_rate)
                        ramp = fleet.stats.open_window(f"ramp-{n}")
                        fleet.add(added, ramp_seconds)
                        await asyncio.sleep(ramp_seconds + poll_interval / 2)
                        # A first cycle also plays each task (rounds x round_seconds).
                        playing = tasks * config.rounds * config.round_seconds
                        lagging = await _wait_on_board(fleet, limit=ramp_seconds + playing)
                        fleet.stats.close_window(ramp)
                        steady = fleet.stats.open_window(f"steady-{n}")
                        fleet.lag = LatencyHistogram()  # this window's event-loop lag
                        await asyncio.sleep(seconds)
                        fleet.stats.close_window(steady)
                        summary = fleet_summary(fleet.devices, fleet_tasks)
                        step = _step_figures(
                            n, ramp, steady, fleet, sampler, summary, p99_limit_ms, lagging
                        )
                        steps.append(step)
                        if progress is not None:
                            progress(_progress_line(step))
                        if not step["ok"]:
                            break
                await tear_down_tasks(op, fleet_tasks)
        finally:
            await sampler.stop()
            await cloud.stop()
    for step in steps:
        note = (
            f"{step['steady_requests_per_s']} req/s, {step['errors']} errors, cloud CPU "
            f"{step['cloud_cpu_percent']}%, simulator {step['simulator_cpu_percent']}%"
        )
        report.add(
            f"N={step['devices']}: steady p99",
            step["steady_p99_ms"],
            "ms",
            at_most=p99_limit_ms,
            note=note,
        )
    passed = [s["devices"] for s in steps if s["ok"]]
    failed = next((s for s in steps if not s["ok"]), None)
    report.add(
        "largest N served",
        float(max(passed)) if passed else None,
        "devices",
        note=f"next step failed: {failed['why_not']}" if failed else "no step failed",
    )
    report.context = {
        "steps": steps,
        "poll_interval_s": poll_interval,
        "steady_window_s": seconds,
        "p99_limit_ms": p99_limit_ms,
        "tasks": tasks,
        "bus": kind,
        "db": store,
        "cloud_processes": 3 if split else 1,
        "setup_rate_devices_per_s": setup_rate,
        "cpus": os.cpu_count(),
    }
    return report


def _progress_line(step: dict[str, Any]) -> str:
    verdict = "ok" if step["ok"] else "FAILED"
    return (
        f"N={step['devices']}: {verdict}; steady p50/p95/p99 {step['steady_p50_ms']}/"
        f"{step['steady_p95_ms']}/{step['steady_p99_ms']} ms at "
        f"{step['steady_requests_per_s']} req/s; ramp ({step['ramp_s']:.0f} s) p99 "
        f"{step['ramp_p99_ms']} ms at "
        f"{step['ramp_requests_per_s']} req/s; {step['errors']} errors; cloud CPU "
        f"{step['cloud_cpu_percent']}%, simulator CPU {step['simulator_cpu_percent']}%, "
        f"peak connections {step['peak_connections']}, load {step['load_average_1min']}"
        + (f" ({step['why_not']})" if step["why_not"] else "")
    )
