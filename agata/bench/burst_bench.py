"""``agata bench load --mode onboard|restart``: bursts of devices coming on line together.

One cloud is started as a child process (as in :mod:`agata.bench.load_bench`) with K
running tasks, and a simulated fleet (:class:`~agata.simulate.simulator.Fleet`) from
this process. Simulated devices honour ``503``/``429`` + ``Retry-After`` (they wait and
resend, :mod:`agata.simulate.device`), as real agents do.

- ``onboard``: N new devices start at R a second (N / R seconds). Each enrolls,
  reports its attributes and downloads and plays every task it matches (~16 requests).
  Reported: the onboarding rate the cloud sustained (devices on board per second, from
  the first device on board to the last), its ratio to the offered rate R (the
  bare limit of this run: the cloud cannot onboard faster than devices arrive), the
  requests refused as busy (503/429, each resent), errors by kind, and the accepted
  calls that timed out (must be 0).
- ``restart``: N devices are brought on board (at ``setup_rate``: the onboarding
  figures above are reported for that phase too), then the cloud is
  stopped and started again (same data, same port; runs left running are restarted,
  ``reconcile = restart``, so every device joins its tasks' new runs: a second burst).
  Reported: the time from the restarted cloud's first answer until every device has
  completed a cycle again (polled and played its tasks' new runs), busy refusals,
  errors while the cloud was up, and timeouts (must be 0).

A device's cycle that fails while the cloud is down (connection refused) is expected
during a restart and counted apart (``errors_while_down``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from agata.bench.report import BenchReport
from agata.simulate.cloud_process import CloudProcess
from agata.simulate.fleet import create_enrollment_token, set_up_tasks, tear_down_tasks
from agata.simulate.simulator import Fleet, SimulationOptions, device_config, fleet_summary
from agata.simulate.stats import Window

__all__ = ["run_onboard_bench", "run_restart_bench"]

#: Kinds of failed requests that mean an accepted call got no answer in time.
TIMEOUT_KINDS = ("timeout", "http_504")


def _timeouts(kinds: dict[str, int]) -> int:
    return sum(n for key, n in kinds.items() if key.rsplit(":", 1)[-1] in TIMEOUT_KINDS)


async def _until(predicate: Callable[[], bool], limit: float) -> bool:
    deadline = time.perf_counter() + limit
    while not predicate():
        if time.perf_counter() >= deadline:
            return False
        await asyncio.sleep(0.25)
    return True


def _cloud_cpu(cloud: CloudProcess, since: tuple[float, float]) -> float | None:
    started, cpu = since
    seconds = time.perf_counter() - started
    if seconds <= 0:
        return None
    return round(100 * (cloud.cpu_seconds() - cpu) / seconds, 1)


def _settings_env(max_in_flight: int | None, admission_wait: float | None) -> dict[str, str]:
    env = {}
    if max_in_flight is not None:
        env["AGATA_MAX_IN_FLIGHT"] = str(max_in_flight)
    if admission_wait is not None:
        env["AGATA_ADMISSION_WAIT"] = str(admission_wait)
    return env


def _window_figures(window: Window, fleet: Fleet, shed_before: int) -> dict[str, Any]:
    kinds = window.errors_by_kind()
    lag = fleet.lag.summary_ms()
    return {
        "simulator_cpu_percent": round(
            100 * (time.process_time() - fleet.cpu_mark) / max(window.seconds, 1e-9), 1
        ),
        "simulator_loop_lag_p99_ms": lag["p99_ms"],
        "simulator_loop_lag_max_ms": lag["max_ms"],
        "peak_connections": fleet.peak_connections,
        "requests": window.latency.count,
        "p99_ms": window.to_json()["p99_ms"],
        "busy_refusals": fleet.shed_total - shed_before,
        "errors": window.errors,
        "errors_by_kind": kinds,
        "accepted_calls_timed_out": _timeouts(kinds),
    }


async def run_onboard_bench(
    devices: int,
    rate: float,
    *,
    tasks: int = 4,
    poll_interval: float = 10.0,
    bus_url: str = "memory://",
    db_url: str | None = None,
    max_in_flight: int | None = None,
    admission_wait: float | None = None,
    progress: Callable[[str], Any] | None = None,
) -> BenchReport:
    """N devices arriving at R/s: the onboarding rate the cloud sustains."""
    kind, store = bus_url.split(":")[0], (db_url or "sqlite://").split(":")[0]
    report = BenchReport(
        f"onboarding burst: {devices} devices arriving at {rate:g}/s ({kind}, {store})"
    )
    options = SimulationOptions(devices=devices, poll_interval=poll_interval, tasks=tasks)
    arrival = devices / rate
    with tempfile.TemporaryDirectory(prefix="agata-bench-burst-") as folder:
        cloud = CloudProcess(
            Path(folder) / "cloud",
            bus_url=bus_url,
            db_url=db_url,
            env=_settings_env(max_in_flight, admission_wait),
        )
        await cloud.start()
        headers = {"Authorization": f"Bearer {cloud.operator_token}"}
        try:
            async with httpx.AsyncClient(base_url=cloud.url, headers=headers, timeout=30) as op:
                fleet_tasks = await set_up_tasks(op, tasks)
                config = device_config(options, await create_enrollment_token(op, devices))
                prefix = f"sim-{secrets.token_hex(3)}"
                async with Fleet(cloud.url, config, max_devices=devices, id_prefix=prefix) as fleet:
                    window = fleet.stats.open_window("onboard")
                    fleet.mark()
                    cpu_from = (time.perf_counter(), cloud.cpu_seconds())
                    started = time.perf_counter()
                    fleet.add(devices, arrival)
                    limit = 3 * arrival + 120.0
                    await _until(lambda: all(d.on_board_at for d in fleet.devices), limit)
                    fleet.stats.close_window(window)
                    cloud_cpu = _cloud_cpu(cloud, cpu_from)
                    on_board = [d.on_board_at for d in fleet.devices if d.on_board_at is not None]
                    figures = _window_figures(window, fleet, 0)
                    summary = fleet_summary(fleet.devices, fleet_tasks)
                await tear_down_tasks(op, fleet_tasks)
        finally:
            await cloud.stop()
    # From the first device on board to the last: each device's own time to play its
    # tasks (the same for all) drops out, the cloud falling behind does not.
    span = (max(on_board) - min(on_board)) if len(on_board) > 1 else None
    sustained = round((len(on_board) - 1) / span, 2) if span else None
    to_all = (max(on_board) - started) if on_board else None
    figures.update(
        devices=devices,
        offered_rate=rate,
        sustained_rate=sustained,
        seconds_to_all_on_board=round(to_all, 1) if to_all else None,
        not_on_board=devices - len(on_board),
        devices_missing_tasks=summary["devices_missing_tasks"],
        cloud_cpu_percent=cloud_cpu,
        load_average_1min=round(os.getloadavg()[0], 2),
    )
    ratio = round(sustained / rate, 3) if sustained else None
    report.add("offered onboarding rate (bare limit)", rate, "devices/s")
    report.add(
        "sustained onboarding rate",
        sustained,
        "devices/s",
        note=f"ratio to the offered rate {ratio}; {figures['not_on_board']} not on board",
    )
    report.add("busy refusals (503/429, resent)", float(figures["busy_refusals"]), "requests")
    report.add(
        "accepted calls that timed out", float(figures["accepted_calls_timed_out"]), "calls",
        at_most=0,
    )  # fmt: skip
    report.add("errors", float(figures["errors"]), "requests", note=str(figures["errors_by_kind"]))
    report.context = {"run": figures, "bus": kind, "db": store, "tasks": tasks,
                      "cpus": os.cpu_count()}  # fmt: skip
    if progress is not None:
        progress(str(figures))
    return report


async def run_restart_bench(
    devices: int,
    *,
    setup_rate: float = 20.0,
    tasks: int = 4,
    poll_interval: float = 10.0,
    bus_url: str = "memory://",
    db_url: str | None = None,
    max_in_flight: int | None = None,
    admission_wait: float | None = None,
    progress: Callable[[str], Any] | None = None,
) -> BenchReport:
    """N devices on board, the cloud restarted: the time until all are back on board."""
    kind, store = bus_url.split(":")[0], (db_url or "sqlite://").split(":")[0]
    report = BenchReport(f"cloud restart under {devices} connected devices ({kind}, {store})")
    options = SimulationOptions(devices=devices, poll_interval=poll_interval, tasks=tasks)
    arrival = devices / setup_rate
    env = {"AGATA_RECONCILE": "restart", **_settings_env(max_in_flight, admission_wait)}
    with tempfile.TemporaryDirectory(prefix="agata-bench-restart-") as folder:
        cloud = CloudProcess(Path(folder) / "cloud", bus_url=bus_url, db_url=db_url, env=env)
        await cloud.start()
        headers = {"Authorization": f"Bearer {cloud.operator_token}"}
        try:
            async with httpx.AsyncClient(base_url=cloud.url, headers=headers, timeout=30) as op:
                fleet_tasks = await set_up_tasks(op, tasks)
                config = device_config(options, await create_enrollment_token(op, devices))
                prefix = f"sim-{secrets.token_hex(3)}"
                async with Fleet(cloud.url, config, max_devices=devices, id_prefix=prefix) as fleet:
                    setup = fleet.stats.open_window("onboard")
                    fleet.mark()
                    cpu_from = (time.perf_counter(), cloud.cpu_seconds())
                    fleet.add(devices, arrival)
                    on = await _until(
                        lambda: all(d.on_board_at for d in fleet.devices), 3 * arrival + 120.0
                    )
                    fleet.stats.close_window(setup)
                    onboarding = _window_figures(setup, fleet, 0)
                    onboarding["cloud_cpu_percent"] = _cloud_cpu(cloud, cpu_from)
                    firsts = [d.on_board_at for d in fleet.devices if d.on_board_at is not None]
                    if len(firsts) > 1 and max(firsts) > min(firsts):
                        span = max(firsts) - min(firsts)
                        onboarding["sustained_rate"] = round((len(firsts) - 1) / span, 2)
                    onboarding["not_on_board"] = devices - len(firsts)
                    if progress is not None:
                        progress(f"{devices} devices on board: {on}; restarting the cloud")
                    down = fleet.stats.open_window("down")
                    stopped = time.perf_counter()
                    await cloud.stop()
                    await cloud.start()
                    fleet.stats.close_window(down)
                    up_at = time.perf_counter()
                    shed_before = fleet.shed_total
                    window = fleet.stats.open_window("after-restart")
                    fleet.mark()
                    cpu_from = (up_at, cloud.cpu_seconds())
                    back = await _until(
                        lambda: all((d.last_ok_at or 0) > up_at for d in fleet.devices),
                        3 * arrival + 180.0,
                    )
                    fleet.stats.close_window(window)
                    cloud_cpu = _cloud_cpu(cloud, cpu_from)
                    times = [
                        d.last_ok_at
                        for d in fleet.devices
                        if d.last_ok_at is not None and d.last_ok_at > up_at
                    ]
                    figures = _window_figures(window, fleet, shed_before)
                    summary = fleet_summary(fleet.devices, fleet_tasks)
                await tear_down_tasks(op, fleet_tasks)
        finally:
            await cloud.stop()
    seconds = round(max(times) - up_at, 1) if back and times else None
    figures.update(
        devices=devices,
        onboarding=onboarding,
        all_on_board_before=on,
        cloud_down_s=round(up_at - stopped, 1),
        seconds_to_all_back=seconds,
        not_back=devices - len(times),
        errors_while_down=down.errors,
        devices_missing_tasks=summary["devices_missing_tasks"],
        cloud_cpu_percent=cloud_cpu,
        load_average_1min=round(os.getloadavg()[0], 2),
    )
    report.add(
        "sustained onboarding rate (before the restart)",
        onboarding.get("sustained_rate"),
        "devices/s",
        note=f"offered {setup_rate:g}/s; {onboarding['not_on_board']} not on board; "
        f"{onboarding['busy_refusals']} busy refusals; "
        f"{onboarding['accepted_calls_timed_out']} accepted calls timed out",
    )
    report.add(
        "time until every device is back on board",
        seconds,
        "s",
        note=f"cloud down {figures['cloud_down_s']} s; {figures['not_back']} not back",
    )
    report.add("busy refusals (503/429, resent)", float(figures["busy_refusals"]), "requests")
    report.add(
        "accepted calls that timed out", float(figures["accepted_calls_timed_out"]), "calls",
        at_most=0,
    )  # fmt: skip
    report.add(
        "errors after the restart",
        float(figures["errors"]),
        "requests",
        note=str(figures["errors_by_kind"]),
    )
    report.context = {"run": figures, "bus": kind, "db": store, "tasks": tasks,
                      "cpus": os.cpu_count()}  # fmt: skip
    if progress is not None:
        progress(str(figures))
    return report
