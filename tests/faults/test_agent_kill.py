"""The agent killed with SIGKILL mid-task, with a task in quarantine, then restarted.

tests/edge/test_agent_faults.py already checks that a killed agent's client side dies with
it and that the restart ends the leftover grandchild and runs the task afresh. What it
does not check, and this test does: the quarantine survives the SIGKILL (the failed task
is not tried again), and after the restarted agent stops no process of either run is
left on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cloud_harness import Cloud, running_cloud
from edge.conftest import (
    Device,
    create_task,
    enroll,
    eventually,
    pid_alive,
    running_agent,
    work_folder,
)

from faults.harness import live_processes

AGENT_CLI = "import sys; from agata.cli.edge_cmd import edge_app; edge_app(sys.argv[1:])"


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path) as running:
        yield running


@pytest.fixture
async def device(cloud: Cloud, tmp_path: Path) -> Device:
    data_dir = tmp_path / "device"
    return Device(cloud, data_dir, await enroll(cloud, "dev1", data_dir))


def read_state(device: Device) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((device.data_dir / "edge" / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return state


async def test_a_killed_agent_keeps_its_quarantine_and_leaves_no_process(
    cloud: Cloud, device: Device, tmp_path: Path
) -> None:
    # Prepare: the first task fails (quarantine), the agent switches to the second,
    # whose client side starts a grandchild
    await create_task(cloud, "a-error", "error")
    await create_task(cloud, "b-hold", "grandchild")
    pid_file = work_folder(device.data_dir, "b-hold") / "grandchild.pid"
    work = str(pid_file.parent).rsplit("task_b-hold", 1)[0]  # in every client's command line
    with (tmp_path / "agent.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            AGENT_CLI,
            "run",
            "--cloud-url",
            cloud.node.url,
            "--user-id",
            "dev1",
            "--data-dir",
            str(device.data_dir),
            "--policy",
            "one",
            "--request-interval",
            "30",
            "--quarantine-seconds",
            "600",
            stdout=log,
            stderr=log,
        )
    try:

        def settled() -> dict[str, Any] | None:
            state = read_state(device)
            quarantined = [q["task_id"] for q in state.get("quarantine", [])]
            running = [r["task_id"] for r in state.get("running", [])]
            ok = quarantined == ["a-error"] and running == ["b-hold"] and pid_file.exists()
            return state if ok else None

        state = await eventually(settled, timeout=20, what="a-error quarantined, b-hold running")
        client = int(state["running"][0]["pid"])
        grandchild = int(pid_file.read_text())
        pid_file.unlink()

        # Execute: SIGKILL, no chance to clean up
        process.kill()
        await process.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    await eventually(lambda: not pid_alive(client), what="client ended with its agent")

    try:
        # Execute: the agent restarts on the same data folder
        async with running_agent(device.agent(policy="one"), wait_push=False) as agent:
            # Assert: the quarantine is back at once, with its reason
            [entry] = agent.quarantine()
            assert entry.task_id == "a-error" and "broken on purpose" in entry.reason
            # Assert: the leftover is ended, the other task runs afresh, the failed one
            # is not tried again
            await eventually(lambda: not pid_alive(grandchild), what="leftover ended")
            await eventually(pid_file.exists, timeout=10, what="b-hold started again")
            again = int(pid_file.read_text())
            assert [t.task_id for t in agent.running_tasks()] == ["b-hold"]
            assert device.events.find("start task on device", "start", task_id="a-error") == []
            assert [q.task_id for q in agent.quarantine()] == ["a-error"]
            assert live_processes(work) != []  # the scan below sees client sides
        # Assert: nothing of either run is left once the agent has stopped
        await eventually(lambda: not pid_alive(again), what="stopped on shutdown")
        leftovers = live_processes(work)
    finally:
        for pid in (grandchild, client):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert leftovers == []
    assert read_state(device)["running"] == []
    assert [q["task_id"] for q in read_state(device)["quarantine"]] == ["a-error"]
