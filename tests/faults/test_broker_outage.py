"""RabbitMQ goes away for ~3 s and comes back while the cloud runs on amqp:// with a
task's server side running.

The cloud is a real ``agata cloud run --bus amqp://…`` process talking to the shared test
broker through a TCP proxy; cutting the proxy is the outage (the broker itself is never
stopped: other tests use it).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from faults.harness import (
    CloudProcess,
    Proxy,
    add_task,
    cloud_process,
    eventually,
    live_processes,
    pid_alive,
)

OUTAGE_SECONDS = 3.0
RPC_TIMEOUT = 5.0
#: Longest wait for the services to serve again once the broker is back.
RECONNECT_SECONDS = 10.0

#: Reports one round of metrics every 0.1 s until stopped; the work folder keeps the
#: last round it reported.
TICKING_SERVER_PY = """
import pathlib, sys, time
from agata.runtime import TaskReporter
reporter = TaskReporter()
work = pathlib.Path(sys.argv[1])
n = 0
while True:
    n += 1
    reporter.send_metrics(n, acc=n / 1000)
    reporter.send_info(f"tick {n}")  # a component event per tick
    (work / "last_round").write_text(str(n))
    time.sleep(0.1)
"""


def stored_rounds(db: Path, task_id: str) -> list[int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT round FROM metrics WHERE task_id = ? ORDER BY id", (task_id,)
        ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[Proxy]:
    parts = urlsplit(amqp_url)
    running = Proxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await running.start()
    try:
        yield running
    finally:
        await running.cut()


def stored_state(db: Path, task_id: str) -> str | None:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT state FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    return None if row is None else str(row[0])


def ignores_sigterm(pid: int) -> bool:
    """True once process ``pid`` ignores SIGTERM (its SigIgn mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def through(proxy: Proxy, amqp_url: str) -> str:
    parts = urlsplit(amqp_url)
    return urlunsplit(
        parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}")
    )


def stops_recorded(events: list[dict[str, object]]) -> int:
    return sum(e["event"] == "Task stopped on cloud" for e in events)


async def serves_again(cloud: CloudProcess, task_id: str) -> bool:
    response = await cloud.op("rpc_exec_get_task_by_id", {"task_id": task_id})
    return response.status_code == 200


@pytest.mark.amqp
@pytest.mark.timeout(90)
async def test_the_cloud_rides_out_a_broker_outage(
    tmp_path: Path, amqp_url: str, proxy: Proxy
) -> None:
    # Prepare: the cloud on amqp:// through the proxy, three tasks, one of them running
    via_proxy = through(proxy, amqp_url)
    data_dir = tmp_path / "cloud"
    env = {
        "AGATA_RPC_TIMEOUT": str(RPC_TIMEOUT),
        "AGATA_SERVER_GRACE_SECONDS": "1",
        # The task's work folder where the test reads it (no task user's own folder).
        "AGATA_TASK_USER": "",
    }
    marker = f"--outage-{proxy.port}"
    async with cloud_process(data_dir, bus=via_proxy, env=env) as cloud:
        for task_id in ("idle1", "idle2"):
            await add_task(cloud, task_id, TICKING_SERVER_PY)
        await add_task(cloud, "live", TICKING_SERVER_PY, ["--tick", marker])
        await cloud.ok("rpc_exec_start_server_task", {"task_id": "live"})
        pids = await eventually(lambda: live_processes(marker), what="server side started")
        await eventually(
            lambda: len(stored_rounds(data_dir / "agata.db", "live")) >= 5,
            what="metrics before the outage",
        )
        before = await cloud.ok("rpc_exec_list_tasks", {})
        rounds_before = len(stored_rounds(data_dir / "agata.db", "live"))

        # Execute: the broker goes away; operators keep calling
        await proxy.cut()
        cut_at = time.monotonic()
        during: list[tuple[int, str, float]] = []
        while time.monotonic() - cut_at < OUTAGE_SECONDS:
            started = time.monotonic()
            try:
                response = await cloud.op("rpc_exec_get_task_by_id", {"task_id": "live"})
                during.append((response.status_code, response.text, time.monotonic() - started))
            except httpx.HTTPError as exc:  # the gateway itself must keep answering
                during.append((0, repr(exc), time.monotonic() - started))
            await asyncio.sleep(0.2)
        created_during = await cloud.op(
            "rpc_exec_create_task",
            {
                "task_id": "lost",
                "host": "h",
                "port": 1,
                "username": "u",
                "password": "p",
                "files_paths": [],
            },
        )
        rounds_during = len(stored_rounds(data_dir / "agata.db", "live")) - rounds_before

        # Execute: the broker comes back; nothing is restarted by hand
        await proxy.resume()
        back_at = time.monotonic()
        await eventually(
            lambda: serves_again(cloud, "live"),
            timeout=RECONNECT_SECONDS,
            what="served after the outage",
        )
        reconnect_seconds = time.monotonic() - back_at

        # Assert (after recovery): every service serves again, nothing was lost
        after = await cloud.ok("rpc_exec_list_tasks", {})
        await cloud.ok("rpc_exec_update_user_info", {"user_id": "dev1", "data_qnt": 3})
        device = await cloud.ok("rpc_exec_get_user_info", {"user_id": "dev1"})
        still_running = live_processes(marker)
        await asyncio.sleep(0.5)  # metrics keep coming after the outage
        await cloud.ok("rpc_exec_stop_server_task", {"task_id": "live"})
        await eventually(lambda: not live_processes(marker), what="server side stopped")
        last_reported = int((data_dir / "work" / "task_live" / "last_round").read_text())
        rounds = stored_rounds(data_dir / "agata.db", "live")
        metrics = await cloud.ok("rpc_exec_get_task_metrics", {"task_id": "live"})
        await cloud.ok("rpc_exec_start_server_task", {"task_id": "live"})
        restarted = await cloud.ok("rpc_exec_get_task_by_id", {"task_id": "live"})
        await cloud.ok("rpc_exec_stop_server_task", {"task_id": "live"})
        stopped = await cloud.ok("rpc_exec_get_task_by_id", {"task_id": "live"})

        async def events_of_both_stops() -> list[dict[str, Any]] | None:
            events = []  # the two starts are runs 1 and 2, each with its own events
            for run in (1, 2):
                body = {"task_id": "live", "run": run}
                events += await cloud.ok("rpc_exec_get_task_events", body)
            stops = [e for e in events if e["event"] == "Task stopped on cloud"]
            return events if len(stops) == 2 else None

        events = await eventually(events_of_both_stops, timeout=10, what="events recorded")
        log = cloud.log_text()

    failures = [d for d in during if d[0] != 200]
    print(f"\nduring the outage: {during[0][1]}")
    print(
        f"\nbroker outage {OUTAGE_SECONDS:g} s: reconnected {reconnect_seconds:.2f} s after the "
        f"broker came back; {len(failures)}/{len(during)} gateway calls during the outage "
        f"failed (slowest {max(d[2] for d in during):.3f} s), all 503; metrics stored: "
        f"{rounds_before} before, {rounds_during} during, {len(rounds)} in all "
        f"(last round reported {last_reported}); AMQP connections through the proxy: "
        f"{proxy.connections}"
    )
    # The services reconnected by themselves, quickly.
    assert reconnect_seconds < 10
    # Calls during the outage: a clear 503 at once, never a hang up to the rpc timeout.
    assert during and len(failures) == len(during)
    for status, text, seconds in during:
        assert status == 503, text
        assert "bus unavailable" in text
        assert "Traceback" not in text
        assert seconds < RPC_TIMEOUT
    assert created_during.status_code == 503
    assert "bus unavailable" in created_during.text
    # No task record lost, none half-made; the device registry serves again.
    assert [t["ID"] for t in after] == [t["ID"] for t in before]
    assert "lost" not in {t["ID"] for t in after}
    assert device["user_id"] == "dev1"
    # The server side kept running through the outage (same process) and kept reporting:
    # every round it reported is stored exactly once, before, during and after.
    assert still_running == pids
    assert rounds_during > 0
    assert rounds == list(range(1, len(rounds) + 1))
    assert last_reported <= len(rounds) <= last_reported + 1
    assert len(metrics) == len(rounds)
    # start/stop work after the recovery; events flow again through the broker.
    assert restarted["running"] is True
    assert stopped["running"] is False and stopped["state"] == "stopped"
    assert any(e["event"] == "Task stopped on cloud" for e in events)
    # Component events of the outage were held and published once the broker was back:
    # every tick of the first run is in the timeline, in order.
    ticks = [
        int(e["event"].rsplit(" ", 1)[1])
        for e in events
        if e["event"].startswith("task live reported tick ")
    ]
    first_run = ticks[: ticks.index(1, 1)] if 1 in ticks[1:] else ticks
    assert first_run == list(range(1, len(first_run) + 1))
    assert len(first_run) >= last_reported
    # The operator's log tells the story in a few lines, without tracebacks.
    assert "Traceback" not in log
    assert " ERROR " not in log
    assert "lost the broker connection" in log and "reconnected to the broker" in log


STUBBORN_PY = """
import signal, time
from agata.runtime import TaskReporter
signal.signal(signal.SIGTERM, signal.SIG_IGN)
TaskReporter()
time.sleep(600)
"""


@pytest.mark.amqp
@pytest.mark.timeout(60)
async def test_a_call_in_flight_when_the_broker_drops_fails_at_once_and_acts_once(
    tmp_path: Path, amqp_url: str, proxy: Proxy
) -> None:
    # Prepare: a server side that ignores SIGTERM, so stopping it takes the grace (2 s).
    # The broker redelivers the stop only while it is within its caller's deadline (a
    # request carries it as its expiration: past it the broker drops it), so the RPC
    # timeout here spans the whole way to the recovery: the stop getting under way (up
    # to `eventually`'s 10 s), the outage and the reconnection. With 5 s, a reconnection
    # slowed by a loaded machine found the stop already dropped: no second delivery.
    rpc_timeout = 10 + OUTAGE_SECONDS + RECONNECT_SECONDS
    env = {"AGATA_RPC_TIMEOUT": str(rpc_timeout), "AGATA_SERVER_GRACE_SECONDS": "2"}
    marker = f"--in-flight-{proxy.port}"
    async with cloud_process(tmp_path / "cloud", bus=through(proxy, amqp_url), env=env) as cloud:
        await add_task(cloud, "held", STUBBORN_PY, [marker])
        await cloud.ok("rpc_exec_start_server_task", {"task_id": "held"})
        [pid] = await eventually(lambda: live_processes(marker), what="server side started")
        await eventually(lambda: ignores_sigterm(pid), what="its SIGTERM handler installed")

        # Execute: the broker drops while the stop is being carried out: the service has
        # recorded the task stopped and waits out the grace of the process it signalled
        stop = asyncio.create_task(cloud.op("rpc_exec_stop_server_task", {"task_id": "held"}))
        await eventually(
            lambda: stored_state(tmp_path / "cloud" / "agata.db", "held") == "stopped",
            what="the stop under way in the task manager",
        )
        assert not stop.done() and pid_alive(pid)  # still within the grace
        await proxy.cut()
        cut_at = time.monotonic()
        answered = await stop
        answer_seconds = time.monotonic() - cut_at
        await asyncio.sleep(OUTAGE_SECONDS)
        await proxy.resume()
        await eventually(
            lambda: serves_again(cloud, "held"), timeout=RECONNECT_SECONDS, what="served again"
        )
        task = await cloud.ok("rpc_exec_get_task_by_id", {"task_id": "held"})
        restarted = await cloud.op("rpc_exec_start_server_task", {"task_id": "held"})
        await cloud.ok("rpc_exec_stop_server_task", {"task_id": "held"})
        events = await cloud.ok("rpc_exec_get_task_events", {"task_id": "held"})
        log = cloud.log_text()

    print(
        f"\na stop in flight when the broker dropped: {answered.status_code} after "
        f"{answer_seconds:.3f} s; the task ended {task['state']}; events 'Task stopped on "
        f"cloud' recorded for its 2 stops: {stops_recorded(events)}"
    )
    # The caller learns at once that the bus is gone (the outcome is unknown to it) ...
    assert answered.status_code == 503 and "bus unavailable" in answered.text
    assert answer_seconds < 1
    # ... the service finished the stop once; the request the broker redelivered after
    # the recovery was refused as a conflict, not acted on twice.
    assert task["running"] is False and task["state"] == "stopped"
    assert not pid_alive(pid)
    assert "rpc_exec_stop_server_task refused: task held is not running" in log
    assert restarted.status_code == 200, restarted.text
    assert "Traceback" not in log
