"""500 simulated devices for 30 s against a real cloud: no error, every task delivered.

The cloud runs in child processes (``python -m agata cloud run`` on a loopback port),
not in the test's event loop: 500 devices polling, downloading and reporting keep the
simulator busy (~20 % of a core: JSON, hashing, timers); in one loop its work would
delay the cloud's replies and the cloud's blocking database calls would delay the
simulator's clocks — the latencies would be neither's. In separate processes the
figures are the cloud's (plus loopback), and the simulator's own CPU is reported.

Each case sets up tasks whose criteria split the fleet, runs the fleet (devices start
over the first 10 s — each enrolls, reports, downloads and plays every task it matches
— then poll every 10 s ± 10 %), and checks the simulator's side (no failed request,
every device ran every task it matches) and the cloud's side (for every task, the
devices it matches are exactly those that reported it finished). p50/p95/p99 of the
steady window (after 15 s) are written to the test output.

(a) ``memory://`` + SQLite: one cloud process, 4 tasks (~15 requests per device to
    come on board, ~8,800 requests in all).
(b) RabbitMQ (``amqp_url``) + PostgreSQL (a fresh schema of ``pg_url``): the cloud
    scaled out as on ``amqp://`` it is meant to be — task manager, device registry and
    gateway in a process each — and 2 tasks (~6,500 requests). Every request costs
    several bus messages and PostgreSQL round trips there: the three processes,
    RabbitMQ, PostgreSQL and the simulator share 2 cores and serve ~250 requests/s of
    this mix, so the fleet comes on board in ~25 s (reports wait 1-3 s at p50 in the
    device registry's queue meanwhile) and 4 tasks each (~8,800 requests) would not fit
    in 30 s on this machine. See docs/benchmarks.md, "Load: the largest fleet".

A report that times out is sent again, as a real agent does; that is a retry (printed),
not an error — only a report that is lost fails the test (docs/simulate.md). Both still
need most of the machine: with other work taking several cores the cloud gets less than
a core, the device registry's queue outgrows the 10 s timeout during the enrollment
burst and enrollments time out, or the fleet does not come on board in time (devices
missing tasks). Case (b) also needs a broker of its own: any other cloud on the same
RabbitMQ vhost consumes the same operation queues (``scripts/test.sh`` starts private
services for each run).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agata.protocol.operations import GET_TASK_DEVICES
from agata.simulate import CloudProcess, SimulationOptions, SimulationResult, run_fleet
from agata.simulate.cloud_process import CloudProcesses
from agata.simulate.fleet import create_enrollment_token, set_up_tasks, tear_down_tasks
from agata.simulate.simulator import ONBOARDING_LIMIT

DEVICES = 500
SECONDS = 30.0
#: The longest a case may take with each step at its own bound: the cloud's start (60 s
#: a process, CloudProcess.start), the fleet's run, its stop (stop_grace 15 s, then up to
#: ONBOARDING_LIMIT for devices still coming on board), the cloud's stop (15 s) and the
#: operator's calls around them (30 s). A loaded machine then fails on the assertions
#: (what the fleet saw), not on pytest's clock: at load ~7 the case took 122 s (a 90 s
#: timeout then), and pytest-timeout's interruption crashed the whole run (INTERNALERROR).
CASE_TIMEOUT = 60 + SECONDS + 15 + ONBOARDING_LIMIT + 15 + 30

pytestmark = [pytest.mark.load, pytest.mark.timeout(CASE_TIMEOUT)]


async def _simulate(
    cloud: CloudProcess | CloudProcesses,
    tasks_count: int,
    label: str,
    report: Callable[[str], None],
) -> SimulationResult:
    await cloud.start()
    try:
        headers = {"Authorization": f"Bearer {cloud.operator_token}"}
        async with httpx.AsyncClient(base_url=cloud.url, headers=headers, timeout=30) as op:
            tasks = await set_up_tasks(op, tasks_count)
            token = await create_enrollment_token(op, DEVICES)
            result = await run_fleet(
                SimulationOptions(devices=DEVICES, duration=SECONDS, tasks=tasks_count),
                cloud.url,
                enrollment_token=token,
                tasks=tasks,
                target={"mode": "process", "case": label},
            )
            cloud_view = {
                t.task_id: (
                    await op.post(f"/{GET_TASK_DEVICES}", json={"task_id": t.task_id})
                ).json()
                for t in tasks
            }
            await tear_down_tasks(op, tasks)
    finally:
        await cloud.stop()
    steady = result.steady
    assert steady is not None
    report(
        f"\n[load] {label}: {DEVICES} devices, {result.stats['elapsed_s']:.0f} s, "
        f"{result.stats['requests']} requests, {result.errors} errors, "
        f"{result.stats['retries']} retries {result.stats['retries_by_kind'] or ''}; steady "
        f"({steady['window_s']:.0f} s, {steady['requests_per_s']} req/s) p50/p95/p99 = "
        f"{steady['p50_ms']}/{steady['p95_ms']}/{steady['p99_ms']} ms; all requests p99 "
        f"{result.stats['all']['p99_ms']} ms; simulator CPU {result.simulator['cpu_percent']}%; "
        f"last device on board at {result.fleet['last_on_board_s']} s; "
        f"busy refusals {result.simulator['busy_refusals'] or 0}"
    )
    for line in _per_operation(result):
        report(line)

    # Simulator's side: nothing failed, everyone started, polled and got its tasks.
    assert result.errors == 0, result.stats["errors_by_kind"]
    fleet = result.fleet
    assert fleet["started"] == fleet["enrolled"] == fleet["reported"] == DEVICES
    assert fleet["polled"] == DEVICES
    assert fleet["devices_missing_tasks"] == 0, (
        fleet["missing_examples"],
        f"last device on board at {fleet['last_on_board_s']} s, "
        f"{result.stats['cancelled_at_stop']} cancelled at the stop",
    )
    assert all(t["matching"] > 0 for t in fleet["tasks"]), fleet["tasks"]
    assert fleet["tasks"][0]["completed"] == DEVICES  # the task without criteria
    assert steady["count"] > 0 and steady["p99_ms"] is not None

    # Cloud's side: for each task, the matching devices are those that finished it.
    for task in fleet["tasks"]:
        view = cloud_view[task["task_id"]]
        finished = {s["user_id"] for s in view["states"] if s["status"] == "finished"}
        assert set(view["matching"]) == finished, task["task_id"]
        assert len(finished) == task["matching"]
    return result


def _per_operation(result: SimulationResult) -> list[str]:
    return [
        f"[load]   {op}: {v['count']} requests, p50/p99 {v['p50_ms']}/{v['p99_ms']} ms"
        for op, v in result.stats["operations"].items()
        if v["count"]
    ]


async def test_500_devices_memory_sqlite(
    tmp_path: Path, report_line: Callable[[str], None]
) -> None:
    cloud = CloudProcess(tmp_path / "cloud")
    await _simulate(cloud, 4, "memory:// + SQLite, 4 tasks", report_line)


@pytest.mark.amqp
@pytest.mark.postgres
async def test_500_devices_amqp_postgres(
    tmp_path: Path,
    fresh_amqp_url: str,
    pg_schema_url: str,
    report_line: Callable[[str], None],
) -> None:
    cloud = CloudProcesses(tmp_path / "cloud", bus_url=fresh_amqp_url, db_url=pg_schema_url)
    label = "amqp:// + PostgreSQL, 3 cloud processes, 2 tasks"
    await _simulate(cloud, 2, label, report_line)
