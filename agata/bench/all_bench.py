"""``agata bench``: every measurement beside the limit it is judged against, and one
JSON file.

Runs, in order: the bus (:mod:`~agata.bench.bus_bench`), the cloud's steps through the
HTTP gateway (:mod:`~agata.bench.cloud_bench`), task-request throughput with simulated
devices (:mod:`~agata.bench.devices_bench`), a real agent process
(:mod:`~agata.bench.edge_bench`) and the console's device queries
(:mod:`~agata.bench.console_bench`). Each part measures its own limits in the same run
(:mod:`~agata.bench.bare`) and gives its verdicts on the ratio to them, so the verdicts
hold from one machine to another. The machine's load average is recorded before and
after each part: figures taken on a busy machine say so.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agata.bench.report import BenchReport, render


def machine() -> dict[str, Any]:
    wrk = shutil.which("wrk")
    version = ""
    if wrk:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        version = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "wrk": version or None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _timed(name: str, part: Callable[[], list[BenchReport]]) -> list[BenchReport]:
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    reports = part()
    for report in reports:
        report.context["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        report.context["seconds"] = round(time.monotonic() - started, 1)
    render(reports)
    return reports


def run_all(
    *,
    devices: int = 1000,
    amqp_url: str | None = None,
    json_out: Path | None = None,
    quick: bool = False,
) -> list[BenchReport]:
    from agata.bench.bus_bench import run_bus_bench
    from agata.bench.cloud_bench import run_cloud_bench
    from agata.bench.console_bench import run_console_bench
    from agata.bench.devices_bench import run_devices_bench
    from agata.bench.edge_bench import run_edge_bench

    calls = 2_000 if quick else 20_000
    samples = 20 if quick else 200
    seconds = 3 if quick else 10
    edge_samples = 4 if quick else 10
    idle = 3.0 if quick else 10.0
    reports: list[BenchReport] = []
    reports += _timed("bus", lambda: [run_bus_bench(amqp_url, calls, 16)])
    reports += _timed("cloud", lambda: run_cloud_bench(amqp_url, samples))
    reports += _timed("devices", lambda: [run_devices_bench(devices, 20, seconds, 4)])
    if amqp_url:
        reports += _timed(
            "devices-amqp", lambda: [run_devices_bench(devices, 20, seconds, 4, amqp_url)]
        )
    reports += _timed("edge", lambda: [run_edge_bench(edge_samples, idle)])
    reports += _timed(
        "console", lambda: [run_console_bench(10_000, samples // 4, 0 if quick else 1000)]
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        data = {"machine": machine(), "reports": [r.to_json() for r in reports]}
        json_out.write_text(json.dumps(data, indent=2))
    return reports
