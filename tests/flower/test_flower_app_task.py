"""A flower-app task through AGATA, end to end, with real SuperLink and SuperNodes.

Each test here runs Flower's Deployment Runtime for real (tens of seconds each): the
cloud starts the run's SuperLink and submits the app, two agents start a SuperNode each.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cloud_harness import running_cloud
from flower_harness import (
    FLOWER_CLOUD,
    app_files,
    create_app_task,
    ended,
    flower_processes,
    free_port,
    make_agent,
    running_agents,
    task_record,
)


@pytest.mark.timeout(400)  # a real Flower run: ~90 s here, more on a busy machine
async def test_the_digits_app_runs_on_two_devices_and_records_its_rounds(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, **FLOWER_CLOUD) as cloud:
        port = free_port()
        await create_app_task(
            cloud,
            "digits",
            app_files(),
            port=port,
            server_arguments=["num-server-rounds=3"],
            client_arguments=["partition-id={partition_id}", "num-partitions=2"],
        )
        agents = [
            await make_agent(cloud, tmp_path, f"dev{index}", partition_id=index)
            for index in range(2)
        ]
        async with running_agents(*agents):
            started = await cloud.op("rpc_exec_start_server_task", {"task_id": "digits"})
            assert started.status_code == 200, started.text

            record = await ended(cloud, "digits")

            devices = await cloud.op("rpc_exec_get_task_devices", {"task_id": "digits"})

        assert (record["state"], record["state_reason"]) == (
            "finished",
            record["state_reason"],
        )
        assert record["state"] == "finished", record["state_reason"]
        assert "completed" in record["state_reason"]
        metrics = (await cloud.op("rpc_exec_get_task_metrics", {"task_id": "digits"})).json()
        server = {m["round"]: m["metrics"] for m in metrics if m["source"] == "server"}
        assert sorted(server) == [1, 2, 3]
        assert server[3]["acc"] > 0.85
        logs = (await cloud.op("rpc_exec_get_task_logs", {"task_id": "digits"})).json()
        assert any("ROUND 3/3" in line["text"] for line in logs)
        states = {s["user_id"]: s["status"] for s in devices.json()["states"]}
        assert set(states) == {"dev0", "dev1"}
        # The run's end is not the devices' failure: nothing quarantined.
        assert all(agent.quarantine() == [] for agent in agents)
        assert flower_processes(str(port)) == []  # no SuperLink or SuperNode left


async def test_a_serverapp_that_raises_fails_the_run_with_the_exception(tmp_path: Path) -> None:
    broken = b"""
from flwr.serverapp import Grid, ServerApp
from flwr.app import Context

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    raise ValueError("the learning rate is negative")
"""
    async with running_cloud(tmp_path, **FLOWER_CLOUD) as cloud:
        port = free_port()
        await create_app_task(cloud, "broken", app_files(**{"server_app.py": broken}), port=port)
        started = await cloud.op("rpc_exec_start_server_task", {"task_id": "broken"})
        assert started.status_code == 200, started.text

        record = await ended(cloud, "broken", timeout=120)

        assert record["state"] == "failed"
        assert "ValueError: the learning rate is negative" in record["state_reason"]
        assert flower_processes(str(port)) == []


async def test_too_few_nodes_fail_the_run_at_the_join_deadline(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, **FLOWER_CLOUD) as cloud:
        port = free_port()
        await create_app_task(
            cloud,
            "lonely",
            app_files(),
            port=port,
            server_arguments=["agata.min-nodes=2", "agata.join-seconds=3", "agata.poll-seconds=1"],
        )
        started = await cloud.op("rpc_exec_start_server_task", {"task_id": "lonely"})
        assert started.status_code == 200, started.text

        record = await ended(cloud, "lonely", timeout=90)

        assert record["state"] == "failed"
        assert "only 0 of the 2 nodes needed joined within 3 s" in record["state_reason"]
        assert flower_processes(str(port)) == []
        again = await task_record(cloud, "lonely")
        assert not again["running"]
