"""Run a simulated fleet against a cloud: ``agata simulate`` without the command line.

- :func:`run_fleet` — N :class:`~agata.simulate.device.SimulatedDevice` in this event
  loop against the gateway at ``url``, for ``duration`` seconds; returns a
  :class:`SimulationResult`.
- :func:`simulate_against` — the same after setting up K tasks and an enrollment token
  on that cloud with an operator token (and removing the tasks afterwards).
- :func:`simulate_embedded` — starts a cloud in this process first (``memory://`` and
  SQLite in a temporary folder, or the bus and database given). The cloud then shares
  the simulator's event loop and core: its latencies include the simulator's own work.
  For a measurement, run the cloud in its own process
  (:class:`~agata.simulate.cloud_process.CloudProcess`, as the load test and
  ``agata bench load`` do).

Devices start spread over ``ramp`` seconds (by default one poll interval, as real
devices that were switched on at random moments), so the one-off burst of enrollments,
first reports and downloads is spread too. All devices share one ``httpx.AsyncClient``
with a pool of up to N busy HTTP/1.1 keep-alive connections
(:class:`~agata.simulate.pool.StackPool`: constant cost per request, unlike httpx's
default pool); idle ones are dropped after 4 s, before the gateway's own 5 s
keep-alive timeout, so no request is sent on a connection the server is closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import random
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from agata.errors import AgataError, ErrorCode
from agata.simulate.device import (
    DeviceApi,
    DeviceConfig,
    SimulatedDevice,
    fleet_attributes,
)
from agata.simulate.fleet import (
    FleetTask,
    create_enrollment_token,
    expected_tasks,
    set_up_tasks,
    tear_down_tasks,
)
from agata.simulate.histogram import LatencyHistogram
from agata.simulate.pool import FleetTransport, StackPool
from agata.simulate.stats import FleetStats

#: Name of the measurement window after the warm-up.
STEADY = "steady"

__all__ = [
    "STEADY",
    "Fleet",
    "SimulationOptions",
    "SimulationResult",
    "check_gateway",
    "run_fleet",
    "simulate_against",
    "simulate_embedded",
]

logger = logging.getLogger(__name__)

#: Idle pooled connections are closed after this long (the gateway closes at 5 s).
KEEPALIVE_EXPIRY = 4.0


def _skip_sniffio_lookups() -> None:
    """httpcore runs ``import sniffio`` for every lock it creates (several per request);
    when sniffio is not installed each attempt searches ``sys.path`` again (~10 % of the
    simulator's CPU). ``None`` in ``sys.modules`` makes the import fail at once, which
    is what httpcore expects then (it assumes asyncio)."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


#: Seconds :meth:`Fleet.stop` waits for the next device still coming on board to get
#: there: it waits as long as they keep arriving, and gives up after this long without
#: one (a cloud that stopped serving them, not one that serves them slowly).
ONBOARDING_GRACE = 60.0
#: Seconds :meth:`Fleet.stop` waits at most, in all, for devices still coming on board.
ONBOARDING_LIMIT = 300.0


@dataclass(frozen=True)
class SimulationOptions:
    """How to simulate. ``ramp`` defaults to one poll interval; ``warmup`` (left out of
    the steady window) to the ramp plus half a poll interval."""

    devices: int
    duration: float = 30.0
    poll_interval: float = 10.0
    jitter: float = 0.1
    ramp: float | None = None
    warmup: float | None = None
    tasks: int = 4
    legacy: bool = False
    seed: int = 7
    id_prefix: str = "sim"
    rounds: int = 2
    round_seconds: float = 0.5
    timeout: float = 10.0
    stop_grace: float = 15.0

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise AgataError(ErrorCode.INVALID_ARGUMENT, "simulate at least one device")
        if self.poll_interval <= 0 or self.duration <= 0:
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT, "duration and poll interval must be positive"
            )
        if not 0 <= self.jitter < 1:
            raise AgataError(ErrorCode.INVALID_ARGUMENT, "jitter must be in [0, 1)")

    @property
    def ramp_seconds(self) -> float:
        return self.poll_interval if self.ramp is None else max(0.0, self.ramp)

    @property
    def warmup_seconds(self) -> float:
        if self.warmup is not None:
            return max(0.0, self.warmup)
        return self.ramp_seconds + self.poll_interval / 2


@dataclass
class SimulationResult:
    """What a run measured; :meth:`to_json` is what ``--json`` prints."""

    options: SimulationOptions
    target: dict[str, Any]
    fleet: dict[str, Any]
    stats: dict[str, Any]
    simulator: dict[str, Any]
    tasks: list[FleetTask] = field(default_factory=list)
    started_at: float = 0.0
    """``time.perf_counter()`` when the devices were let loose (not in the JSON)."""

    @property
    def errors(self) -> int:
        return int(self.stats["errors"])

    @property
    def ok(self) -> bool:
        """No error, every device started, and (when the tasks are known) every device
        ran every task it matches."""
        missing = self.fleet.get("devices_missing_tasks")
        return (
            self.errors == 0
            and self.fleet["started"] == self.options.devices
            and (missing is None or missing == 0)
        )

    @property
    def steady(self) -> dict[str, Any] | None:
        """The steady window's figures (None when the run ended before the warm-up)."""
        window: dict[str, Any] | None = self.stats["windows"].get(STEADY)
        return window

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "options": asdict(self.options),
            "target": self.target,
            "fleet": self.fleet,
            "stats": self.stats,
            "simulator": self.simulator,
        }


class Fleet:
    """Simulated devices on one shared ``httpx.AsyncClient``.

    ``async with Fleet(...) as fleet``, then :meth:`add` devices (as often as wanted:
    the fleet may grow), open measurement windows on :attr:`stats`, and :meth:`stop`.
    ``max_devices`` sizes the connection pool."""

    def __init__(
        self,
        url: str,
        config: DeviceConfig,
        *,
        max_devices: int,
        seed: int = 7,
        id_prefix: str = "sim",
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.config = config
        self.max_devices = max_devices
        self.seed = seed
        self.id_prefix = id_prefix
        self.timeout = timeout
        self.stats = FleetStats()
        self.devices: list[SimulatedDevice] = []
        self.lag = LatencyHistogram()
        self.peak_connections = 0
        self.cpu_seconds = 0.0
        self.cpu_mark = 0.0
        self._rng = random.Random(seed)
        self._runs: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._http: httpx.AsyncClient | None = None
        self._transport: FleetTransport | None = None
        self._api: DeviceApi | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._cpu_before = 0.0

    async def __aenter__(self) -> Fleet:
        _skip_sniffio_lookups()
        self._transport = FleetTransport(
            max_connections=self.max_devices, keepalive_expiry=KEEPALIVE_EXPIRY
        )
        self._http = httpx.AsyncClient(
            base_url=self.url, transport=self._transport, timeout=httpx.Timeout(self.timeout)
        )
        self._api = DeviceApi(self._http, self.stats)
        self._watcher = asyncio.create_task(self._watch(self._transport.pool))
        self._cpu_before = time.process_time()
        self.stats.restart_clock()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def mark(self) -> None:
        """Start measuring the simulator afresh: event-loop lag and :attr:`cpu_mark`."""
        self.lag = LatencyHistogram()
        self.cpu_mark = time.process_time()

    @property
    def shed_total(self) -> int:
        """Requests the cloud refused as busy (503/429 + Retry-After), each resent."""
        return sum(self._api.shed.values()) if self._api is not None else 0

    def add(self, count: int, ramp: float) -> None:
        """Start ``count`` more devices, spread over the next ``ramp`` seconds."""
        assert self._api is not None, "use the fleet inside `async with`"
        first = len(self.devices)
        new = [
            SimulatedDevice(a, self._api, self.config, self._rng)
            for a in fleet_attributes(count, start=first, seed=self.seed, prefix=self.id_prefix)
        ]
        slots = list(range(count))
        self._rng.shuffle(slots)  # start order unrelated to ids and attributes
        self.devices += new
        self._runs += [
            asyncio.create_task(d.run((slot + self._rng.random()) * ramp / count, self._stop))
            for d, slot in zip(new, slots, strict=True)
        ]

    async def stop(self, grace: float = 15.0) -> None:
        """Stop polling: idle devices at once, busy ones after their cycle (at most
        ``grace`` seconds); devices still coming on board — their first cycle, perhaps
        waiting out a busy cloud's Retry-After — as long as they keep getting there (the
        next within :data:`ONBOARDING_GRACE`, all within :data:`ONBOARDING_LIMIT`): a
        burst must cost time, never devices, on a slow machine too. Then close the
        client."""
        if self._http is None:
            return
        self._stop.set()
        self.stats.stop_clock()
        for device, run in zip(self.devices, self._runs, strict=True):
            if not device.busy:
                run.cancel()
        pending = [run for run in self._runs if not run.done()]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=grace)
            device_of = dict(zip(self._runs, self.devices, strict=True))
            onboarding = {run for run in late if device_of[run].on_board_at is None}
            if onboarding:
                still = await _while_arriving(onboarding, ONBOARDING_GRACE, ONBOARDING_LIMIT)
                late = (late - onboarding) | still
            self.stats.cancelled = len(late)
            for run in late:
                run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        self.cpu_seconds = time.process_time() - self._cpu_before
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._http.aclose()
        self._http = None

    async def _watch(self, pool: StackPool) -> None:
        """Event-loop lag (how late a 100 ms sleep wakes up) and pooled connections: when
        the simulator itself is saturated, its latencies are not the cloud's."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.1)
            self.lag.record(time.perf_counter() - started - 0.1)
            self.peak_connections = max(self.peak_connections, pool.connections)

    def simulator_json(self) -> dict[str, Any]:
        lag = self.lag.summary_ms()
        return {
            "cpu_s": round(self.cpu_seconds, 2),
            "cpu_percent": round(100 * self.cpu_seconds / max(self.stats.elapsed, 1e-9), 1),
            "loop_lag_p99_ms": lag["p99_ms"],
            "loop_lag_max_ms": lag["max_ms"],
            "peak_connections": self.peak_connections,
            "busy_refusals": dict(self._api.shed) if self._api is not None else {},
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        }

    def result(
        self,
        options: SimulationOptions,
        tasks: list[FleetTask] | None = None,
        target: dict[str, Any] | None = None,
    ) -> SimulationResult:
        return SimulationResult(
            options=options,
            target={"url": self.url, "legacy": self.config.legacy, **(target or {})},
            fleet=fleet_summary(self.devices, tasks, t0=self.stats.t0),
            stats=self.stats.to_json(),
            simulator=self.simulator_json(),
            tasks=list(tasks or []),
            started_at=self.stats.t0,
        )


def device_config(options: SimulationOptions, enrollment_token: str | None) -> DeviceConfig:
    if not options.legacy and not enrollment_token:
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT,
            "simulated devices need an enrollment token (or legacy mode)",
        )
    return DeviceConfig(
        poll_interval=options.poll_interval,
        jitter=options.jitter,
        legacy=options.legacy,
        enrollment_token=enrollment_token,
        rounds=options.rounds,
        round_seconds=options.round_seconds,
    )


async def run_fleet(
    options: SimulationOptions,
    url: str,
    *,
    enrollment_token: str | None = None,
    tasks: list[FleetTask] | None = None,
    target: dict[str, Any] | None = None,
) -> SimulationResult:
    """Run ``options.devices`` simulated devices against the gateway at ``url``.

    ``tasks`` (when known) lets the result say whether every device got every task it
    matches. Without ``enrollment_token`` devices must be in legacy mode."""
    config = device_config(options, enrollment_token)
    async with Fleet(
        url,
        config,
        max_devices=options.devices,
        seed=options.seed,
        id_prefix=options.id_prefix,
        timeout=options.timeout,
    ) as fleet:
        fleet.add(options.devices, options.ramp_seconds)
        warmup = min(options.warmup_seconds, options.duration)
        await asyncio.sleep(warmup)
        if warmup < options.duration:
            fleet.stats.open_window(STEADY)
            await asyncio.sleep(options.duration - warmup)
        await fleet.stop(options.stop_grace)
    return fleet.result(options, tasks, target)


async def _while_arriving(
    runs: set[asyncio.Task[None]], idle: float, limit: float
) -> set[asyncio.Task[None]]:
    """Wait for ``runs`` while each ``idle`` seconds sees one of them end, for at most
    ``limit`` seconds in all; return those still running."""
    deadline = time.perf_counter() + limit
    pending = runs
    while pending:
        timeout = min(idle, deadline - time.perf_counter())
        if timeout <= 0:
            break
        done, pending = await asyncio.wait(
            pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            break
    return pending


def fleet_summary(
    devices: list[SimulatedDevice], tasks: list[FleetTask] | None, *, t0: float | None = None
) -> dict[str, Any]:
    """What the fleet did; with ``t0`` (when the devices were let loose) also when the
    last device came on board (``last_on_board_s``), which tells a fleet that came on
    board late from one that lost devices."""
    boarded = [d.on_board_at for d in devices if d.on_board_at is not None]
    summary: dict[str, Any] = {
        "devices": len(devices),
        "started": sum(d.started for d in devices),
        "enrolled": sum(d.credential is not None for d in devices),
        "reported": sum(d.reported for d in devices),
        "polled": sum(d.polls > 0 for d in devices),
        "polls": sum(d.polls for d in devices),
        "on_board": len(boarded),
        "last_on_board_s": round(max(boarded) - t0, 1) if boarded and t0 is not None else None,
        "tasks_completed": sum(len(d.completed) for d in devices),
        "devices_with_a_task": sum(bool(d.completed) for d in devices),
        "tasks": None,
        "devices_missing_tasks": None,
        "missing_examples": [],
    }
    if tasks is None:
        return summary
    matching = {t.task_id: 0 for t in tasks}
    missing: list[str] = []
    expected_of = expected_tasks(tasks)
    for device in devices:
        expected = expected_of(device.attributes)
        for task_id in expected:
            matching[task_id] += 1
        lacking = expected - set(device.completed)
        if lacking:
            state = "on board" if device.on_board_at is not None else "not on board"
            missing.append(
                f"{device.user_id}: {', '.join(sorted(lacking))} ({device.polls} polls, {state})"
            )
    summary["tasks"] = [
        {
            "task_id": t.task_id,
            "selection_criteria": t.selection_criteria,
            "matching": matching[t.task_id],
            "completed": sum(t.task_id in d.completed for d in devices),
        }
        for t in tasks
    ]
    summary["devices_missing_tasks"] = len(missing)
    summary["missing_examples"] = missing[:10]
    return summary


async def check_gateway(url: str, timeout: float = 10.0) -> None:
    """Fail with a clear ``UNAVAILABLE`` unless an AGATA gateway answers at ``url``
    (``GET /healthz``), rather than letting every simulated device fail on its own."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
            response = await http.get("/healthz")
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise AgataError(
            ErrorCode.UNAVAILABLE, f"cannot reach the cloud at {url}: {reason}"
        ) from None
    if response.status_code != 200:
        raise AgataError(
            ErrorCode.UNAVAILABLE,
            f"{url} is not an AGATA gateway: GET /healthz answered HTTP {response.status_code}",
        )


async def simulate_against(
    options: SimulationOptions,
    url: str,
    *,
    operator_token: str | None = None,
    enrollment_token: str | None = None,
    target: dict[str, Any] | None = None,
) -> SimulationResult:
    """Set up ``options.tasks`` tasks with an operator token (if given), run the fleet,
    then stop and delete those tasks. Fails with an :class:`AgataError` when the cloud
    cannot be reached or refuses the setup."""
    await check_gateway(url, options.timeout)
    if not options.legacy and options.id_prefix == SimulationOptions.id_prefix:
        # An enrolled id cannot enroll again (409): each run against a long-lived cloud
        # gets ids of its own.
        options = replace(options, id_prefix=f"sim-{secrets.token_hex(3)}")
    if operator_token is None:
        return await run_fleet(options, url, enrollment_token=enrollment_token, target=target)
    headers = {"Authorization": f"Bearer {operator_token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as operator:
        tasks = await set_up_tasks(operator, options.tasks)
        try:
            if enrollment_token is None and not options.legacy:
                enrollment_token = await create_enrollment_token(operator, options.devices)
            return await run_fleet(
                options, url, enrollment_token=enrollment_token, tasks=tasks, target=target
            )
        finally:
            await tear_down_tasks(operator, tasks)


async def simulate_embedded(
    options: SimulationOptions, *, bus_url: str = "memory://", db_url: str | None = None
) -> SimulationResult:
    """Start a cloud in this process (``data_dir`` in a temporary folder), simulate
    against it, stop it."""
    from agata.cloud.cloud_node import CloudNode
    from agata.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="agata-simulate-") as folder:
        flags: dict[str, Any] = {
            "data_dir": Path(folder),
            "bus_url": bus_url,
            "db_url": db_url,
            "gateway_port": 0,
            "legacy_devices": options.legacy,
            "server_grace_seconds": 2.0,
        }
        node = CloudNode(load_settings(flags=flags, environ={}))
        await node.start()
        try:
            token = await asyncio.to_thread(node.ensure_operator_token)
            if token is None:  # an existing database (--db) already has operators
                from agata.cloud.credentials.tokens import OPERATOR_PREFIX, hash_token, new_token

                token = new_token(OPERATOR_PREFIX)
                await node.async_store.add_operator_token("agata simulate", hash_token(token))
            db = (db_url or "sqlite://").split(":")[0]
            where = {"mode": "embedded", "bus": bus_url.split(":")[0], "db": db}
            return await simulate_against(options, node.url, operator_token=token, target=where)
        finally:
            await node.stop()
