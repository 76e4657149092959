"""A run's end is never a device's failure; a failure while the run goes on still is.

Two real agents against a real cloud whose server side is a real TCP server: each
client side connects to it and dies with ``ConnectionError`` when it goes away, as a
Flower client does when its server vanishes (``UNAVAILABLE``).
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cloud_harness import Cloud

from agata.edge.run_ends import (
    MAX_OUTPUT_BYTES,
    MAX_OUTPUT_LINE,
    RunEnds,
    bounded_output,
    offers_show_end,
)
from agata.protocol.offers import TaskOffer
from agata.runtime.messages import OutputLine, Stream
from edge.conftest import (
    Device,
    device_states,
    enroll,
    eventually,
    running_agent,
    start_task,
    stop_task,
)

# Listens on the task's port and holds every connection until it is stopped; then, like
# Flower's server in its graceful exit, it drops its clients first and exits a little
# later. A connection that sends "fail" makes it fail by itself (a server side failing
# on the cloud): clients dropped first, then an exception, exit code 1.
SERVER_PY = """
import os, signal, socket, sys, threading, time
from agata.runtime import TaskReporter
TaskReporter()
server = socket.create_server(("127.0.0.1", int(sys.argv[2])))
held = []
def drop_clients():
    for conn in held:
        conn.shutdown(socket.SHUT_RDWR)
        conn.close()
    time.sleep(0.5)
def on_sigterm(signum, frame):
    drop_clients()
    os._exit(0)
def listen(conn):
    if conn.recv(16).startswith(b"fail"):
        held.remove(conn)
        drop_clients()
        sys.stderr.write("RuntimeError: aggregation failed\\n")
        sys.stderr.flush()
        os._exit(1)
signal.signal(signal.SIGTERM, on_sigterm)
while True:
    conn = server.accept()[0]
    held.append(conn)
    threading.Thread(target=listen, args=(conn,), daemon=True).start()
"""

# Connects to the server, reports a round, and dies when the server goes away.
CLIENT_PY = """
import socket, sys, time
from agata.runtime import TaskReporter
r = TaskReporter()
for _ in range(200):
    try:
        conn = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
        break
    except OSError:
        time.sleep(0.05)
else:
    raise ConnectionError("server never came up")
r.send_metrics(1, acc=0.5)
while conn.recv(1024):
    pass
print("the server closed the connection", file=sys.stderr)
raise ConnectionError("StatusCode.UNAVAILABLE: the server went away")
"""

# Fails on its own while its server runs: an import that cannot work, after some output.
FAILING_CLIENT_PY = """
import sys
for i in range(300):
    print("noise line", i, file=sys.stderr)
import no_such_module_x
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def create_port_task(cloud: Cloud, task_id: str, client: str = CLIENT_PY) -> None:
    body: dict[str, Any] = {
        "task_id": task_id,
        "host": "127.0.0.1",
        "port": free_port(),
        "username": f"user-{task_id}",
        "password": f"pass-{task_id}",
        "files_paths": [],
        "server_arguments": ["{port}"],
        "client_arguments": ["{port}"],
    }
    response = await cloud.op("rpc_exec_create_task", body)
    assert response.status_code == 200, response.text
    files = [
        ("files", ("server.py", SERVER_PY.encode())),
        ("files", ("client.py", client.encode())),
    ]
    response = await cloud.http.post(f"/api/tasks/{task_id}/files", files=files, headers=cloud.auth)
    assert response.status_code == 200, response.text


def pids(agent: Any) -> list[int | None]:
    return [task.pid for task in agent.running_tasks()]


def rounds_seen(agent: Any) -> bool:
    return [task.round for task in agent.running_tasks()] == [1]


@pytest.mark.parametrize("end", ["operator stop", "server side fails on the cloud"])
async def test_a_run_ends_then_starts_again_on_two_agents_at_once(
    cloud: Cloud, device: Device, tmp_path: Path, end: str
) -> None:
    # Prepare: two agents run the task's client sides, connected to its server side
    second = Device(cloud, tmp_path / "device2", "", user_id="dev2")
    second.credential = await enroll(cloud, "dev2", second.data_dir)
    await create_port_task(cloud, "t1")
    await start_task(cloud, "t1")
    async with (
        running_agent(device.agent()) as one,
        running_agent(second.agent()) as two,
    ):
        for agent in (one, two):
            await eventually(lambda a=agent: rounds_seen(a), what="client side connected")
        first_pids = pids(one) + pids(two)

        # Execute: the run ends (its server side goes; a failing one drops its clients
        # before the cloud sees it end), then the operator starts the task again
        if end == "operator stop":
            await stop_task(cloud, "t1")
        else:
            record = await cloud.op("rpc_exec_get_task_by_id", {"task_id": "t1"})
            with socket.create_connection(("127.0.0.1", record.json()["port"])) as conn:
                conn.sendall(b"fail")
                await eventually(lambda: _task_state(cloud, "t1", "failed"), what="failed")
        for agent in (one, two):
            await eventually(lambda a=agent: not a.running_tasks(), what="client side ended")
        began = time.monotonic()
        await start_task(cloud, "t1")
        for agent in (one, two):
            await eventually(
                lambda a=agent: len(pids(a)) == 1 and pids(a)[0] not in first_pids,
                timeout=5,
                what="the new run's client side",
            )
        took = time.monotonic() - began

        # Assert: both run the new run within a second; nothing is in quarantine; the
        # cloud heard of no failure of a device
        assert took < 1.0, f"the new run reached both devices after {took:.3f} s"
        assert one.quarantine() == [] and two.quarantine() == []
        assert one.state.stats["failed"] == 0 and two.state.stats["failed"] == 0

        async def device_events(run: int) -> list[str]:
            body = {"task_id": "t1", "run": run}
            events = await cloud.op("rpc_exec_get_task_events", body)
            assert events.status_code == 200, events.text
            return [e["event"] for e in events.json() if e["event"].startswith("device")]

        async def both_stopped() -> list[str] | None:
            # Reports travel on their own (the agent never waits for the cloud): a
            # device's end of run 1 may arrive after run 2 began; it stays in run 1.
            first = await device_events(1)
            ended = all(
                any(t.startswith(f"device {user} stopped task t1") for t in first)
                for user in ("dev1", "dev2")
            )
            return first if ended else None

        first = await eventually(both_stopped, timeout=5, what="both ends in run 1's events")
        texts = first + await device_events(2)
        for user in ("dev1", "dev2"):
            assert not any(t.startswith(f"device {user} stopped") for t in texts[len(first) :])
            assert not any(f"device {user} failed" in t for t in texts), texts
            assert not any(f"device {user} quarantined" in t for t in texts), texts
        if end != "operator stop":  # the clients saw their server go first
            for user in ("dev1", "dev2"):
                assert any(
                    t.startswith(f"device {user} stopped task t1: ended with the run (exited")
                    for t in texts
                ), texts


async def _task_state(cloud: Cloud, task_id: str, state: str) -> bool:
    response = await cloud.op("rpc_exec_get_task_by_id", {"task_id": task_id})
    return bool(response.json().get("state") == state)


async def test_a_client_that_fails_while_its_run_goes_on_is_quarantined(
    cloud: Cloud, device: Device
) -> None:
    # Prepare: a running task whose client side cannot import a module
    await create_port_task(cloud, "t1", FAILING_CLIENT_PY)
    await start_task(cloud, "t1")

    # Execute
    async with running_agent(device.agent()) as agent:
        await eventually(
            lambda: _status_is(cloud, "t1", "quarantined"), timeout=10, what="quarantined"
        )

        # Assert: the quarantine, its reason (the exception) and its expiry
        [entry] = agent.quarantine()
        reason = "exited with code 1: ModuleNotFoundError: No module named 'no_such_module_x'"
        assert entry.reason == reason
        assert agent.state.stats["failed"] == 1
        states = await device_states(cloud, "t1")
        assert states["dev1"] == ("quarantined", reason)
        record = await cloud.op("rpc_exec_get_user_info", {"user_id": "dev1"})
        [task] = [t for t in record.json()["tasks"] if t["task_id"] == "t1"]
        until = datetime.fromisoformat(task["quarantined_until"]).timestamp()
        assert abs(until - entry.until) < 1.0

        # Assert: the client side's last lines are the device's log lines of the task
        logs = await cloud.op("rpc_exec_get_task_logs", {"task_id": "t1", "limit": 1000})
        mine = [line for line in logs.json() if line["source"] == "dev1"]
        assert len(mine) == 200  # the last 200 of its 304 lines
        assert mine[-1]["text"] == "ModuleNotFoundError: No module named 'no_such_module_x'"
        assert [line["text"] for line in mine[:2]] == ["noise line 104", "noise line 105"]
        assert {line["stream"] for line in mine} == {"stderr"}


def test_a_flood_of_output_is_cut_to_its_last_lines_within_the_bytes_bound() -> None:
    # Prepare: 500 lines of 5,000 characters, the last one short
    lines = [OutputLine(Stream.STDERR, f"{i:04d}" + "x" * 5000) for i in range(499)]
    lines.append(OutputLine(Stream.STDERR, "Boom: the end"))

    # Execute
    sent = bounded_output(lines)

    # Assert: the note, then the newest lines, each cut, all within the bound
    size = sum(len(item["text"].encode()) for item in sent)
    assert size <= MAX_OUTPUT_BYTES
    assert sent[0]["stream"] == "supervisor"
    assert sent[0]["text"] == f"[{500 - (len(sent) - 1)} earlier line(s) left out]"
    assert sent[-1] == {"stream": "stderr", "text": "Boom: the end"}
    assert sent[-2]["text"].startswith("0498") and len(sent[-2]["text"]) == MAX_OUTPUT_LINE
    assert len(sent) > 50


async def _status_is(cloud: Cloud, task_id: str, status: str) -> bool:
    states = await device_states(cloud, task_id)
    return states.get("dev1", ("", ""))[0] == status


def test_offers_show_a_runs_end_when_the_task_is_gone_or_another_run() -> None:
    # Prepare: the offer a client side started with
    started = TaskOffer.model_validate({"ID": "t1", "version": 2, "client_argv": ["a"]})

    def offer(**fields: Any) -> TaskOffer:
        return TaskOffer.model_validate({"ID": "t1", "version": 2, "client_argv": ["a"], **fields})

    # Execute / Assert
    assert not offers_show_end(started, [offer()])  # the same run goes on
    assert offers_show_end(started, [])  # stopped, finished or failed on the cloud
    assert offers_show_end(started, [TaskOffer.model_validate({"ID": "t2"})])
    assert offers_show_end(started, [offer(version=3)])  # a new bundle version
    assert offers_show_end(started, [offer(client_argv=["b"])])
    numbered = offer(run=4)
    assert offers_show_end(numbered, [offer(run=5)])  # a cloud that numbers runs
    assert not offers_show_end(numbered, [offer(run=4)])


async def test_run_ends_are_remembered_per_task_and_wake_their_waiters() -> None:
    ends = RunEnds()
    waiter = asyncio.create_task(ends.wait(5.0))
    await asyncio.sleep(0)
    before = time.time()

    ends.record_absent([TaskOffer.model_validate({"ID": "t2"})], ["t1", "t2"])

    await asyncio.wait_for(waiter, 1.0)  # woken at once, not after 5 s
    assert ends.ended_since("t1", before)
    assert not ends.ended_since("t2", before)  # still offered
    assert not ends.ended_since("t1", time.time() + 1)  # an end before a later start
