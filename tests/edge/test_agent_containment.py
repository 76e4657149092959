"""The agent's task processes: contained (a setsid grandchild ends on stop) and limited
(by the task's limits or the device's configuration)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cloud_harness import Cloud

from edge.conftest import (
    Device,
    create_task,
    eventually,
    pid_alive,
    running_agent,
    stop_task,
    work_folder,
)


async def test_a_setsid_grandchild_ends_when_the_task_is_stopped(
    cloud: Cloud, device: Device
) -> None:
    # Prepare: a client side that leaves its session
    await create_task(cloud, "t1", "setsid")
    pid_file = work_folder(device.data_dir, "t1") / "grandchild.pid"
    async with running_agent(device.agent()) as agent:
        await eventually(pid_file.exists, timeout=15, what="grandchild started")
        grandchild = int(pid_file.read_text())
        assert pid_alive(grandchild)

        # Execute: the operator stops the task
        await stop_task(cloud, "t1")

        # Assert: the grandchild went with the run, no quarantine (not the device's fault)
        await eventually(lambda: agent.running_tasks() == [], what="client stopped")
        await eventually(lambda: not pid_alive(grandchild), what="grandchild ended")
        assert agent.quarantine() == []
    # Assert: an agent that stopped cleanly leaves no cgroup folder behind
    assert agent.sandbox is not None
    assert [base for base in agent.sandbox.containment.bases.values() if base.exists()] == []


async def test_the_tasks_limit_ends_the_client_with_the_limit_named(
    cloud: Cloud, device: Device
) -> None:
    # A limit only the client side reaches: the task's limits hold for both sides, and a
    # server side ending by its own limit ends the run (not the device's failure).
    async with running_agent(device.agent()) as agent:
        assert agent.sandbox is not None
        if "pids" not in agent.sandbox.containment.enforced:
            pytest.skip("no pids cgroup: RLIMIT_NPROC counts per user, not per run")
        await create_task(cloud, "t1", "forks", limits={"pids": 20})
        await eventually(lambda: agent.quarantine(), timeout=15, what="t1 quarantined")

        [entry] = agent.quarantine()
        assert "process limit of 20" in entry.reason


async def test_the_devices_configured_limit_applies_when_the_task_sets_none(
    cloud: Cloud, device: Device, tmp_path: Path
) -> None:
    await create_task(cloud, "t1", "hold")
    async with running_agent(device.agent(task_wall_seconds=0.5)) as agent:
        await eventually(lambda: agent.quarantine(), timeout=15, what="t1 quarantined")

        [entry] = agent.quarantine()
        assert "wall time limit of 0.5 s exceeded" in entry.reason
