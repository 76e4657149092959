"""The agent when the cloud comes and goes, and when the agent itself is killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from cloud_harness import Cloud, cloud_settings, running_cloud
from helpers import free_port

from agata.cloud.cloud_node import CloudNode
from agata.edge.agent import Agent
from agata.edge.device_info import DeviceInfo
from edge.conftest import (
    Device,
    Events,
    create_task,
    edge_settings,
    enroll,
    eventually,
    pid_alive,
    running_agent,
    work_folder,
)


async def test_cloud_down_at_start_then_up_then_restarted(tmp_path: Path) -> None:
    # Prepare: an agent of a legacy (credential-less) device, the cloud not there yet
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = edge_settings(tmp_path / "device", url, request_interval=2.0)
    agent = Agent(settings, DeviceInfo("old-dev"), on_event=Events(), grace=1.0)
    run = asyncio.create_task(agent.run())
    node: CloudNode | None = None
    try:
        await asyncio.sleep(0.5)
        assert agent.client.reachability.state == "unreachable"
        assert not run.done()

        # Execute: the cloud comes up and a task is started
        async with running_cloud(tmp_path, gateway_port=port, legacy_devices=True) as cloud:
            await create_task(cloud, "t1", "hold")

            # Assert: the task reaches the device (downloaded with the task's password)
            await eventually(lambda: agent.running_tasks(), timeout=6, what="task picked up")
            pid = agent.running_tasks()[0].pid
            assert pid is not None

        # Execute: the cloud is gone while the task runs
        await asyncio.sleep(0.5)

        # Assert: the agent keeps its task and does not crash
        assert [t.pid for t in agent.running_tasks()] == [pid]
        assert agent.client.reachability.state == "unreachable"
        assert not run.done()

        # Execute: the cloud restarts; it marks the task stopped (it was left running)
        node = CloudNode(cloud_settings(tmp_path, gateway_port=port, legacy_devices=True))  # type: ignore[arg-type]
        await node.start()

        # Assert: the agent reconnects and stops the client side of the stopped task
        await eventually(lambda: not agent.running_tasks(), timeout=6, what="task stopped")
        assert agent.client.reachability.state == "reachable"
        await eventually(lambda: not pid_alive(pid), what="client process gone")
    finally:
        agent.shutdown()
        await asyncio.wait_for(run, 15)
        if node is not None:
            await node.stop()


AGENT_CLI = "import sys; from agata.cli.edge_cmd import edge_app; edge_app(sys.argv[1:])"


async def test_a_killed_agent_leaves_no_orphan_after_its_restart(
    cloud: Cloud, device: Device, tmp_path: Path
) -> None:
    # Prepare: an agent in a process of its own runs a client that has a grandchild
    await create_task(cloud, "t1", "grandchild")
    work = work_folder(device.data_dir, "t1")
    log = (tmp_path / "agent.log").open("wb")
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
        "--request-interval",
        "30",
        stdout=log,
        stderr=log,
    )
    try:
        pid_file = work / "grandchild.pid"
        await eventually(pid_file.exists, timeout=15, what="grandchild started")
        grandchild = int(pid_file.read_text())
        state = json.loads((device.data_dir / "edge" / "state.json").read_text())
        client = state["running"][0]["pid"]
        pid_file.unlink()

        # Execute: SIGKILL, no chance to clean up
        process.kill()
        await process.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        log.close()
    await eventually(lambda: not pid_alive(client), what="client ended with its parent")
    assert pid_alive(grandchild)  # what a restart must clean up

    # Execute: the agent restarts on the same data folder
    try:
        async with running_agent(device.agent(), wait_push=False) as agent:
            # Assert: the leftover group is gone, the task runs afresh
            await eventually(lambda: not pid_alive(grandchild), what="leftover ended")
            await eventually(pid_file.exists, timeout=10, what="task started again")
            again = int(pid_file.read_text())
            assert again != grandchild
            assert [t.task_id for t in agent.running_tasks()] == ["t1"]
        await eventually(lambda: not pid_alive(again), what="stopped on shutdown")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)


async def test_sigterm_stops_the_agent_and_its_tasks(cloud: Cloud, device: Device) -> None:
    await create_task(cloud, "t1", "hold")
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
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    state_file = device.data_dir / "edge" / "state.json"

    def running_pid() -> int | None:
        try:
            running = json.loads(state_file.read_text())["running"]
        except (OSError, ValueError):
            return None
        return int(running[0]["pid"]) if running else None

    try:
        client = await eventually(running_pid, timeout=15, what="client started")

        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    assert code == 0
    assert not pid_alive(client)
    assert running_pid() is None


async def test_the_credential_is_stored_for_the_device_only(cloud: Cloud, tmp_path: Path) -> None:
    data_dir = tmp_path / "device"

    await enroll(cloud, "dev9", data_dir)

    path = data_dir / "edge" / "credential"
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["user_id"] == "dev9"
