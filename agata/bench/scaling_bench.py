"""``agata bench scaling``: per-component costs, the capacity model, and its check.

Two runs of a cloud split into processes (:class:`~agata.simulate.cloud_process.
CloudProcesses`) on the ``amqp://`` broker and the PostgreSQL server given, each on a
fresh database of its own (created and dropped here):

1. *unit*: one gateway, one task manager, one device registry, and a second gateway
   that serves no device: it only listens to the notifications every report
   broadcasts, so its CPU is the *fan-out* cost of a report in one more subscriber
   (:mod:`agata.bench.scaling_model`); a simulated fleet of ``devices``
   (:class:`~agata.simulate.simulator.Fleet`) on the first gateway;
2. *check*: two gateways, two task-manager replicas, one device registry; a fleet of
   ``check_devices``, half on each gateway.

Each run measures three windows: *idle* (tasks running, no device yet), *polls* (the
whole fleet on board, polling every ``poll_interval`` s: nothing else happens) and
*reports* (the same polls plus round reports with metrics, ``report_rate`` a second
in the unit run and as many per device in the check run, sent through the devices' own
gateways with their own credentials — what devices in a training round send). In each
window it reads every process's CPU seconds from ``/proc`` (the broker's and the
database's processes too, found by the ports they listen on), RabbitMQ's message
counters (:class:`~agata.bench.meters.BrokerCounters`) and the database's transactions
(``pg_stat_database``). The unit run also opens ``streams`` device event streams and
reads the gateway's resident memory before and after, then measures one more reports
window with the streams open: the gateway's CPU beyond the model's is what its hub
spends looking at every notification for every stream. This process subscribes to the
notifications too and counts them (the deliveries one more subscriber adds per report).

The unit run's windows give the model's constants (:func:`~agata.bench.scaling_model.
fit`: per idle second, per poll, per report, per quantity); the model then predicts the
check run's windows from their length, polls, reports and replicas
(:func:`~agata.bench.scaling_model.predict`), and each prediction is printed beside the
measured sum over the replicas with the error. Last, the model sizes ``fleet_size``
devices (:func:`~agata.bench.scaling_model.size_fleet`).

CPU time per operation, not throughput: on a machine shared with other work a process
that waits for a core does not spend CPU time meanwhile, so the figures move less with
the load than latencies or requests per second do (they still rise somewhat: caches
and the CPU's frequency are shared too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from agata.bench.meters import (
    BrokerCounters,
    DatabaseCounters,
    listener_pid,
    process_cpu_seconds,
    process_rss_bytes,
    process_tree,
)
from agata.bench.report import BenchReport, Figure
from agata.bench.scaling_model import (
    COMPONENTS,
    Model,
    Sizing,
    WindowCounts,
    fit,
    predict,
    size_fleet,
)
from agata.bus import create_bus
from agata.bus.bus import Delivery
from agata.errors import AgataError, ErrorCode
from agata.protocol.operations import NOTIFICATIONS_TOPIC, REPORT_DEVICE_TASK
from agata.simulate.cloud_process import CloudProcesses
from agata.simulate.fleet import create_enrollment_token, set_up_tasks, tear_down_tasks
from agata.simulate.simulator import Fleet, SimulationOptions, device_config
from agata.simulate.stats import Window

__all__ = ["ScalingOptions", "run_scaling_bench"]

#: Below these a check has no verdict: CPU is counted in clock ticks (10 ms) per
#: process, and a few messages more or less are the windows' edges.
CHECK_FLOOR_CPU_S = 0.3
CHECK_FLOOR_COUNT = 100.0
#: The windows begin with at most this share of the fleet not on board yet (a machine
#: shared with other work may leave a few behind); their requests other than polls and
#: reports are counted in the report (``other_requests``), their reports as reports.
LAGGING_SHARE = 0.05

#: The quantities compared with the model, with their units and scale for printing.
SHOWN = {
    "cpu:gateway": ("ms CPU", 1e3),
    "cpu:task-manager": ("ms CPU", 1e3),
    "cpu:device-registry": ("ms CPU", 1e3),
    "cpu:broker": ("ms CPU", 1e3),
    "cpu:database": ("ms CPU", 1e3),
    "messages": ("messages", 1.0),
    "deliveries": ("deliveries", 1.0),
    "transactions": ("transactions", 1.0),
}


@dataclass(frozen=True)
class ScalingOptions:
    bus_url: str
    db_url: str
    rabbitmqctl: str
    devices: int = 100
    check_devices: int = 200
    seconds: float = 20.0
    idle_seconds: float = 15.0
    poll_interval: float = 10.0
    report_rate: float = 10.0
    streams: int = 100
    tasks: int = 2
    setup_rate: float = 5.0
    tolerance: float = 0.25
    fleet_size: int = 100_000
    report_interval: float = 60.0
    utilisation: float = 0.5
    max_connections: int = 10_000


@dataclass
class _Phase:
    """One run: its windows' counts and each process's CPU in each window."""

    name: str
    replicas: dict[str, int]
    windows: dict[str, WindowCounts] = field(default_factory=dict)
    per_process: dict[str, dict[str, float]] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    errors: int = 0
    report_failures: int = 0
    notifications: dict[str, float] = field(default_factory=dict)
    fanout: dict[str, float] = field(default_factory=dict)
    lagging: int = 0
    """Devices not on board when the windows began (at most :data:`LAGGING_SHARE`)."""
    other_requests: dict[str, int] = field(default_factory=dict)
    rss_per_stream: float | None = None
    gateway_rss: float | None = None
    model: Model | None = None
    """The unit run's: fitted inside the run (its streams window needs it)."""


class _Meters:
    """Snapshots of every counter of one run (and the notifications this process got)."""

    def __init__(self, cloud: CloudProcesses, options: ScalingOptions, database: str) -> None:
        self.cloud = cloud
        self.notifications = 0
        amqp_port = urlsplit(options.bus_url).port or 5672
        pg_port = urlsplit(options.db_url).port or 5432
        self.broker_pid = listener_pid(amqp_port)
        self.database_pid = listener_pid(pg_port)
        self.broker = BrokerCounters(options.rabbitmqctl)
        self.database = DatabaseCounters(options.db_url, database)

    def cpu(self) -> dict[str, float]:
        """CPU seconds of each cloud process (by its name) and of the broker and the
        database (the postmaster and its backends)."""
        values = {part.name: process_cpu_seconds(part.pid or 0) for part in self.cloud.parts}
        values["broker"] = process_cpu_seconds(self.broker_pid)
        values["database"] = sum(
            process_cpu_seconds(pid) for pid in process_tree(self.database_pid)
        )
        return values

    async def counters(self) -> tuple[float, dict[str, float]]:
        """(when, counts): the broker's and the database's counters, read off the loop;
        ``when`` is the moment the broker's were read (its command takes seconds)."""
        received, delivered = await asyncio.to_thread(self.broker.read)
        when = time.perf_counter()
        rows = await asyncio.to_thread(self.database.read)
        return when, {
            "messages": float(received),
            "deliveries": float(delivered),
            "transactions": float(rows["transactions"]),
            "notifications": float(self.notifications),
        }

    async def on_notification(self, _delivery: Delivery) -> None:
        self.notifications += 1


def _kind(part_name: str) -> str:
    return next(kind for kind in COMPONENTS if part_name.startswith(kind))


async def _measure(
    meters: _Meters,
    phase: _Phase,
    name: str,
    seconds: float,
    fleets: list[Fleet],
    during: Callable[[], Any] | None = None,
) -> tuple[WindowCounts, list[Window]]:
    """One window of ``seconds``: counters before and after, the fleets' requests in it;
    ``during`` (a coroutine function) runs inside it and returns the reports it sent."""
    t_before, before = await meters.counters()
    cpu0, t0 = meters.cpu(), time.perf_counter()
    windows = [fleet.stats.open_window(f"{phase.name}-{name}") for fleet in fleets]
    job = asyncio.create_task(during()) if during is not None else None
    await asyncio.sleep(seconds)
    for fleet, window in zip(fleets, windows, strict=True):
        fleet.stats.close_window(window)
    cpu1, t1 = meters.cpu(), time.perf_counter()
    reports = await job if job is not None else 0
    t_after, after = await meters.counters()
    elapsed = t1 - t0
    totals: dict[str, float] = {}
    per_process: dict[str, float] = {}
    for part, value in cpu1.items():
        spent = value - cpu0[part]
        per_process[part] = spent
        kind = part if part in ("broker", "database") else _kind(part)
        totals[f"cpu:{kind}"] = totals.get(f"cpu:{kind}", 0.0) + spent
    # The counters were read at other moments than the CPU: scale them to the window.
    scale = elapsed / max(t_after - t_before, 1e-9)
    for key, value in after.items():
        totals[key] = (value - before[key]) * scale
    phase.notifications[name] = totals.pop("notifications")
    polls = sum(
        w.operations["requesting_task"].requests
        for w in windows
        if "requesting_task" in w.operations
    )
    for w in windows:  # devices still on their first cycle
        for operation, stats in w.operations.items():
            if operation != "requesting_task":
                key = f"{name}:{operation}"
                phase.other_requests[key] = phase.other_requests.get(key, 0) + stats.requests
    reports = int(reports) + sum(
        w.operations["report"].requests for w in windows if "report" in w.operations
    )
    phase.per_process[name] = per_process
    subscribers = len(meters.cloud.parts) + 1  # and this process
    counts = WindowCounts(elapsed, polls, int(reports), totals, dict(phase.replicas), subscribers)
    phase.windows[name] = counts
    return counts, windows


async def _send_reports(
    fleets: list[Fleet], task_id: str, rate: float, seconds: float, phase: _Phase
) -> int:
    """Round reports with metrics at ``rate`` a second for ``seconds``, the devices in
    turn, each through its own fleet's gateway; returns how many were accepted."""
    devices = [(fleet, d) for fleet in fleets for d in fleet.devices if d.credential]
    if not devices:
        raise AgataError(ErrorCode.UNAVAILABLE, "no enrolled device to report")
    total = int(rate * seconds)
    clients = {id(fleet): httpx.AsyncClient(base_url=fleet.url, timeout=30) for fleet in fleets}
    rounds: dict[str, int] = {}
    accepted = 0

    async def report(fleet: Fleet, user_id: str, credential: str) -> None:
        nonlocal accepted
        number = rounds[user_id] = rounds.get(user_id, 0) + 1
        body = {
            "user_id": user_id,
            "task_id": task_id,
            "status": "running",
            "round": number,
            "metrics": {"acc": 0.5, "loss": 0.5},
        }
        headers = {"Authorization": f"Bearer {credential}"}
        try:
            response = await clients[id(fleet)].post(
                f"/{REPORT_DEVICE_TASK}", json=body, headers=headers
            )
        except httpx.HTTPError:
            phase.report_failures += 1
            return
        if response.status_code == 200:
            accepted += 1
        else:
            phase.report_failures += 1

    started = time.perf_counter()
    sent: list[asyncio.Task[None]] = []
    try:
        for index in range(total):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            fleet, device = devices[index % len(devices)]
            sent.append(asyncio.create_task(report(fleet, device.user_id, device.credential or "")))
        await asyncio.gather(*sent)
    finally:
        for client in clients.values():
            await client.aclose()
    return accepted


async def _streams(
    meters: _Meters,
    phase: _Phase,
    fleet: Fleet,
    options: ScalingOptions,
    task_id: str,
) -> None:
    """With ``options.streams`` device event streams open on the serving gateway: its
    resident memory before and after they opened (bytes per stream), then a reports
    window like the unit run's, whose gateway CPU beyond the model's is the cost of
    looking at each report's notifications for every stream."""
    gateway = meters.cloud.gateway
    pid = gateway.pid or 0
    devices = [d for d in fleet.devices if d.credential][: options.streams]
    limits = httpx.Limits(max_connections=len(devices) + 1, max_keepalive_connections=0)
    before = process_rss_bytes(pid)
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits)
        )
        for device in devices:  # one at a time: an exit stack is not for concurrent use
            response = await stack.enter_async_context(
                http.stream(
                    "GET",
                    f"/api/devices/{device.user_id}/stream",
                    headers={
                        "Authorization": f"Bearer {device.credential}",
                        "Accept": "text/event-stream",
                    },
                )
            )
            if response.status_code != 200:
                raise AgataError(
                    ErrorCode.UNAVAILABLE, f"a device stream answered {response.status_code}"
                )
        await asyncio.sleep(2.0)
        phase.gateway_rss = float(before)
        phase.rss_per_stream = (process_rss_bytes(pid) - before) / max(1, len(devices))

        quiet, _ = await _measure(meters, phase, "streams-polls", options.seconds, [fleet])

        async def reports() -> int:
            return await _send_reports(
                [fleet], task_id, options.report_rate, options.seconds, phase
            )

        busy, _ = await _measure(
            meters, phase, "streams-reports", options.seconds, [fleet], reports
        )
    model = phase.model
    assert model is not None
    cost = model.costs["cpu:gateway"]
    streams = max(1, len(devices))

    def beyond_model(name: str, window: WindowCounts) -> float:
        """The serving gateway's CPU in ``window`` beyond the model's without streams."""
        expected = (
            cost.idle * window.seconds
            + cost.per_poll * window.polls
            + (cost.per_report + cost.fanout) * window.reports
        )
        return phase.per_process[name][gateway.name] - expected

    idle = beyond_model("streams-polls", quiet) / (quiet.seconds * streams)
    extra = beyond_model("streams-reports", busy) - idle * busy.seconds * streams
    phase.model = replace(
        model,
        rss_per_stream=phase.rss_per_stream,
        gateway_rss=phase.gateway_rss,
        stream_idle=idle,
        stream_per_report=extra / max(1, busy.reports * streams),
    )


def _fit_unit(phase: _Phase) -> Model:
    """The model from the unit run's windows; the fan-out from its listening gateway
    (applied to every kind of process: each does the same decoding of a notification)
    and from this process's own count of notifications."""
    listener = next(name for name in phase.per_process["polls"] if name == "gateway-2")
    polls, reports = phase.windows["polls"], phase.windows["reports"]
    baseline = phase.per_process["polls"][listener] / polls.seconds
    cpu = (phase.per_process["reports"][listener] - baseline * reports.seconds) / reports.reports
    note_rate = phase.notifications["polls"] / polls.seconds
    notes = (phase.notifications["reports"] - note_rate * reports.seconds) / reports.reports
    fanout = {f"cpu:{kind}": cpu for kind in COMPONENTS} | {"deliveries": notes}
    phase.fanout = fanout
    return fit(phase.windows["idle"], polls, reports, fanout)


async def _wait_on_board(fleets: list[Fleet], limit: float) -> int:
    deadline = time.perf_counter() + limit
    while True:
        lagging = sum(d.on_board_at is None for f in fleets for d in f.devices)
        if lagging == 0 or time.perf_counter() >= deadline:
            return lagging
        await asyncio.sleep(0.5)


def _database_url(server_url: str, database: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def _database(options: ScalingOptions, database: str, *, drop: bool) -> None:
    import psycopg

    from agata.bench.meters import _libpq_url

    def run() -> None:
        with psycopg.connect(_libpq_url(options.db_url), autocommit=True) as conn:
            if drop:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            else:
                conn.execute(f'CREATE DATABASE "{database}"')

    await asyncio.to_thread(run)


async def _run_phase(
    options: ScalingOptions,
    name: str,
    replicas: dict[str, int],
    devices: int,
    report_rate: float,
    folder: Path,
    progress: Callable[[str], Any],
    *,
    serving: int | None = None,
    unit: bool = False,
) -> _Phase:
    """One run: the cloud of ``replicas`` on a fresh database, ``devices`` spread over
    the first ``serving`` gateways (all by default), its windows measured; ``unit``:
    the model fitted and the streams window measured too."""
    phase = _Phase(name, {kind: replicas.get(kind, 1) for kind in COMPONENTS})
    database = f"agata_scaling_{secrets.token_hex(4)}"
    await _database(options, database, drop=False)
    cloud = CloudProcesses(
        folder / name,
        bus_url=options.bus_url,
        db_url=_database_url(options.db_url, database),
        replicas=replicas,
    )
    listener = create_bus(options.bus_url)
    try:
        await cloud.start()
        meters = _Meters(cloud, options, database)
        await listener.connect()
        await listener.subscribe(NOTIFICATIONS_TOPIC, meters.on_notification)
        headers = {"Authorization": f"Bearer {cloud.operator_token}"}
        async with httpx.AsyncClient(base_url=cloud.url, headers=headers, timeout=60) as op:
            tasks = await set_up_tasks(op, options.tasks)
            token = await create_enrollment_token(op, devices)
            progress(f"{name}: cloud up ({phase.replicas}); idle window")
            await _measure(meters, phase, "idle", options.idle_seconds, [])
            sim = SimulationOptions(devices, poll_interval=options.poll_interval)
            config = device_config(sim, token)
            gateways = cloud.gateways[: serving or len(cloud.gateways)]
            prefix = f"scale-{secrets.token_hex(3)}"
            ramp = max(options.poll_interval, devices / options.setup_rate)
            async with contextlib.AsyncExitStack() as stack:
                fleets = []
                for index, gateway in enumerate(gateways):
                    share = devices // len(gateways) + (index < devices % len(gateways))
                    fleet = await stack.enter_async_context(
                        Fleet(gateway.url, config, max_devices=share, id_prefix=f"{prefix}-{index}")
                    )
                    fleet.add(share, ramp)
                    fleets.append(fleet)
                progress(f"{name}: {devices} devices coming on board over {ramp:.0f} s")
                await asyncio.sleep(ramp)
                lagging = await _wait_on_board(fleets, ramp + 240)
                phase.lagging = lagging
                if lagging > devices * LAGGING_SHARE:
                    errors = [
                        (f.stats.errors_by_kind(), f.stats.retries_by_kind(), f.shed_total)
                        for f in fleets
                    ]
                    raise AgataError(
                        ErrorCode.UNAVAILABLE,
                        f"{lagging} of {devices} devices did not come on board in "
                        f"{2 * ramp + 240:.0f} s (errors, retries, busy refusals: {errors}; logs: "
                        f"{cloud.parts[0].log_tail(5)})",
                    )
                await asyncio.sleep(options.poll_interval)  # the last ones' tasks end
                progress(f"{name}: polls window ({options.seconds:g} s)")
                _, poll_windows = await _measure(meters, phase, "polls", options.seconds, fleets)
                progress(f"{name}: reports window ({report_rate:g} reports/s)")

                async def reports() -> int:
                    return await _send_reports(
                        fleets, tasks[0].task_id, report_rate, options.seconds, phase
                    )

                _, report_windows = await _measure(
                    meters, phase, "reports", options.seconds, fleets, reports
                )
                for label, windows in (("polls", poll_windows), ("reports", report_windows)):
                    phase.latency[label] = _latency(windows)
                    phase.errors += sum(w.errors for w in windows)
                if unit:
                    phase.model = _fit_unit(phase)
                    progress(f"{name}: {options.streams} device event streams held open")
                    await _streams(meters, phase, fleets[0], options, tasks[0].task_id)
            await tear_down_tasks(op, tasks)
    finally:
        await listener.close()
        await cloud.stop()
        with contextlib.suppress(Exception):
            await _database(options, database, drop=True)
    return phase


def _latency(windows: list[Window]) -> dict[str, Any]:
    """p99 of the polls of the window (the worst of the fleets)."""
    values = [w.to_json()["operations"].get("requesting_task", {}) for w in windows]
    return {
        "polls": sum(v.get("count", 0) for v in values),
        "p99_ms": max((v.get("p99_ms") or 0.0 for v in values), default=None),
    }


async def run_scaling_bench(
    options: ScalingOptions, progress: Callable[[str], Any] | None = None
) -> list[BenchReport]:
    """The unit run, the check run, and the sizing of ``fleet_size`` (module text)."""
    say = progress or (lambda _line: None)
    with tempfile.TemporaryDirectory(prefix="agata-bench-scaling-") as folder:
        unit = await _run_phase(
            options,
            "unit",
            {"gateway": 2},
            options.devices,
            options.report_rate,
            Path(folder),
            say,
            serving=1,
            unit=True,
        )
        assert unit.model is not None
        rate = options.report_rate * options.check_devices / options.devices
        check = await _run_phase(
            options,
            "check",
            {"gateway": 2, "task-manager": 2},
            options.check_devices,
            rate,
            Path(folder),
            say,
        )
    model = unit.model
    return [
        _costs_report(options, unit, model),
        _check_report(options, check, model),
        _sizing_report(options, model),
    ]


def _costs_report(options: ScalingOptions, unit: _Phase, model: Model) -> BenchReport:
    report = BenchReport(
        f"per-component costs (unit run: 1 gateway, 1 task manager, 1 device registry; "
        f"{options.devices} devices polling every {options.poll_interval:g} s)"
    )
    for quantity, (unit_name, scale) in SHOWN.items():
        cost = model.costs.get(quantity)
        if cost is None:
            continue
        per = unit_name.split()[0]
        report.add(f"{quantity} per poll", cost.per_poll * scale, per)
        report.add(f"{quantity} per report", cost.per_report * scale, per)
        if cost.fanout:
            report.add(
                f"{quantity} per report per subscriber",
                cost.fanout * scale,
                per,
                note="fan-out of its notifications (unit run's listening gateway)"
                if quantity.startswith("cpu:")
                else "notifications per report (counted by this process)",
            )
        if quantity.startswith("cpu:"):
            report.add(f"{quantity} idle", cost.idle * 100, "% of a core")
    if model.stream_idle is not None and model.stream_per_report is not None:
        report.add(
            "gateway CPU per open stream",
            model.stream_idle * 1e6,
            "µs/s",
            note="keep-alives; beyond the model without streams",
        )
        report.add(
            "gateway CPU per report per open stream",
            model.stream_per_report * 1e6,
            "µs",
            note="its hub looks at every notification for every stream",
        )
    if model.rss_per_stream is not None:
        report.add(
            "gateway memory per open device stream",
            model.rss_per_stream / 1024,
            "KiB",
            note=f"{options.streams} streams; gateway RSS before {_mb(model.gateway_rss)} MB",
        )
    polls, reports = unit.windows["polls"], unit.windows["reports"]
    report.add(
        "unit run: errors",
        float(unit.errors + unit.report_failures),
        "",
        at_most=0,
        note=f"{polls.polls} polls in {polls.seconds:.0f} s; then {reports.polls} polls and "
        f"{reports.reports} reports; polls p99 {unit.latency['polls']['p99_ms']} ms; "
        f"{unit.lagging} devices not on board; other requests {unit.other_requests}",
    )
    report.context = _context(options, unit)
    return report


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:.0f}"


def _check_report(options: ScalingOptions, check: _Phase, model: Model) -> BenchReport:
    report = BenchReport(
        f"model vs measured (check run: 2 gateways, 2 task managers, 1 device registry; "
        f"{options.check_devices} devices): within ±{options.tolerance:.0%}"
    )
    for name in ("polls", "reports"):
        window = check.windows[name]
        predicted = predict(model, window)
        for quantity, (unit_name, scale) in SHOWN.items():
            if quantity not in predicted:
                continue
            measured = window.totals.get(quantity, 0.0) * scale
            expected = predicted[quantity] * scale
            floor = CHECK_FLOOR_CPU_S if quantity.startswith("cpu:") else CHECK_FLOOR_COUNT
            compared = measured / expected if expected > 0 else None
            ok = None if compared is None else abs(compared - 1) <= options.tolerance
            small = max(measured, expected) / scale < floor
            kind = quantity.removeprefix("cpu:")
            shares = [
                f"{part} {value * scale:.0f}"
                for part, value in sorted(check.per_process[name].items())
                if quantity.startswith("cpu:") and part.startswith(kind)
            ]
            note = "" if len(shares) < 2 else "replicas: " + ", ".join(shares)
            if small:  # a few clock ticks or a few messages: no verdict
                ok, note = None, f"too small to check (< {floor:g}); {note}".rstrip("; ")
            report.figures.append(
                Figure(
                    f"{name} window: {quantity}",
                    measured,
                    unit_name.split()[0],
                    f"model ±{options.tolerance:.0%}",
                    ok,
                    note,
                    expected,
                    "model",
                    "ratio",
                    compared,
                )
            )
    polls, reports = check.windows["polls"], check.windows["reports"]
    report.add(
        "check run: errors",
        float(check.errors + check.report_failures),
        "",
        at_most=0,
        note=f"{polls.polls} polls in {polls.seconds:.0f} s; then {reports.polls} polls and "
        f"{reports.reports} reports; polls p99 {check.latency['polls']['p99_ms']} ms; "
        f"{check.lagging} devices not on board; other requests {check.other_requests}",
    )
    report.context = _context(options, check)
    return report


def _sizing_report(options: ScalingOptions, model: Model) -> BenchReport:
    def size(streams: bool) -> Sizing:
        return size_fleet(
            model,
            options.fleet_size,
            poll_interval=options.poll_interval,
            report_interval=options.report_interval,
            utilisation=options.utilisation,
            max_connections=options.max_connections,
            streams=streams,
        )

    sizing, bare = size(True), size(False)
    report = BenchReport(
        f"{options.fleet_size:,} devices, a poll every {options.poll_interval:g} s and a "
        f"report every {options.report_interval:g} s each ({sizing.polls_per_s:,.0f} polls/s, "
        f"{sizing.reports_per_s:,.0f} reports/s), processes at most "
        f"{options.utilisation:.0%} busy"
    )
    for kind in COMPONENTS:
        report.add(
            f"{kind} replicas",
            float(sizing.replicas[kind]),
            "",
            note=f"{sizing.cores[kind]:.1f} cores in all, {sizing.per_replica[kind]:.2f} each; "
            f"without streams {bare.replicas[kind]} ({bare.cores[kind]:.1f} cores)",
        )
    if sizing.limit:
        report.add("NOT POSSIBLE", None, "", note=sizing.limit)
    fanout = max(
        (model.costs[f"cpu:{k}"].fanout for k in COMPONENTS if f"cpu:{k}" in model.costs),
        default=0.0,
    )
    if fanout > 0:
        largest = options.utilisation / fanout * options.report_interval
        report.add(
            "largest fleet the fan-out allows",
            largest,
            "devices",
            note=f"every process decodes every report's notifications ({fanout * 1e3:.2f} ms "
            f"a report): {options.utilisation:.0%} of a core at a report every "
            f"{options.report_interval:g} s per device",
        )
    report.add("broker CPU", sizing.cores["broker"], "cores", note="RabbitMQ, measured here")
    report.add("broker messages", sizing.messages_per_s, "msg/s", note="published")
    report.add("database CPU", sizing.cores["database"], "cores", note="PostgreSQL")
    report.add("database transactions", sizing.transactions_per_s, "xact/s")
    report.add(
        "gateway memory",
        sizing.gateway_rss_mb,
        "MB",
        note=f"{sizing.streams_per_gateway:,.0f} open streams each",
    )
    report.context = {"sizing": sizing.__dict__, "without_streams": bare.__dict__}
    return report


def _context(options: ScalingOptions, phase: _Phase) -> dict[str, Any]:
    return {
        "phase": phase.name,
        "replicas": phase.replicas,
        "windows": {
            name: {
                "seconds": w.seconds,
                "polls": w.polls,
                "reports": w.reports,
                "totals": dict(w.totals),
            }
            for name, w in phase.windows.items()
        },
        "per_process_cpu_s": phase.per_process,
        "latency": phase.latency,
        "report_failures": phase.report_failures,
        "options": {k: v for k, v in options.__dict__.items() if not k.endswith("url")},
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
