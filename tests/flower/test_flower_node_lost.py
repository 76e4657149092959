"""A SuperNode killed mid-run (SIGKILL of its flower-supernode), with real processes.

The run serves TLS and SuperNode authentication (the cloud has a certificate), so AGATA
registered each node's key and knows which device a Flower node id is. Flower marks a
node offline only when its heartbeats stop for two intervals (up to ~60 s with Flower's
fixed 30 s interval); AGATA then counts it lost after ``lost-seconds``. With the default
tolerance (``lost-nodes`` 0) the run must end failed, naming the device, instead of the
ServerApp's wait for the dead node's reply (an hour by default); with a tolerance of 1
the run goes on with the remaining node and finishes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloud_harness import Cloud, cloud_settings
from flower_harness import (
    FLOWER_CLOUD,
    app_files,
    create_app_task,
    ended,
    eventually,
    flower_processes,
    free_port,
    make_agent,
    running_agents,
)
from tls_certs import make_certificates

from agata.cloud.cloud_node import CloudNode
from agata.edge.agent import Agent

#: Flower's SuperLink marks a silent node offline after 2 x its 30 s heartbeat interval.
FLOWER_OFFLINE_SECONDS = 60.0
LOST_SECONDS = 3.0


def supernode_of(port: int, device_id: str) -> int:
    """The pid of the flower-supernode of ``device_id`` serving the SuperLink on ``port``."""
    with_id = []
    for pid in flower_processes(str(port)):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "flower-supernode" in command and f'device-id="{device_id}"' in command:
            with_id.append(pid)
    assert len(with_id) == 1, f"SuperNodes of {device_id} on port {port}: {with_id}"
    return with_id[0]


async def server_rounds(cloud: Cloud, task_id: str) -> set[int]:
    response = await cloud.op("rpc_exec_get_task_metrics", {"task_id": task_id})
    assert response.status_code == 200, response.text
    return {m["round"] for m in response.json() if m["source"] == "server"}


@asynccontextmanager
async def tls_run(
    tmp_path: Path, server_arguments: list[str]
) -> AsyncIterator[tuple[Cloud, int, list[Agent]]]:
    """A cloud with a certificate, the digits app as task ``app`` on a free port, and
    two running agents (``dev0``, ``dev1``) trusting the cloud's CA; nothing started."""
    certs = make_certificates(tmp_path / "certs")
    node = CloudNode(
        cloud_settings(  # type: ignore[arg-type]
            tmp_path,
            ssl_certfile=certs.cert,
            ssl_keyfile=certs.key,
            ssl_ca_file=certs.ca,
            **FLOWER_CLOUD,
        )
    )
    await node.start()
    try:
        token = await asyncio.to_thread(node.ensure_operator_token)
        assert token
        verify = ssl.create_default_context(cafile=str(certs.ca))
        async with httpx.AsyncClient(base_url=node.url, verify=verify, timeout=30) as http:
            cloud = Cloud(node, http, token)
            port = free_port()
            await create_app_task(
                cloud,
                "app",
                app_files(),
                port=port,
                server_arguments=server_arguments,
                client_arguments=["partition-id={partition_id}", "num-partitions=2"],
            )
            agents = [
                await make_agent(
                    cloud, tmp_path, f"dev{index}", ca_file=certs.ca, partition_id=index
                )
                for index in range(2)
            ]
            async with running_agents(*agents):
                yield cloud, port, agents
    finally:
        await node.stop()


async def kill_mid_run(cloud: Cloud, port: int) -> tuple[dict[str, Any], float]:
    """Start the run, SIGKILL dev0's SuperNode once a round ended; the run's record at
    its end and the seconds from the kill to it."""
    started = await cloud.op("rpc_exec_start_server_task", {"task_id": "app"})
    assert started.status_code == 200, started.text
    await eventually(lambda: server_rounds(cloud, "app"), 180, "a round ended")
    victim = supernode_of(port, "dev0")
    survivor = supernode_of(port, "dev1")

    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    record = await ended(cloud, "app", timeout=FLOWER_OFFLINE_SECONDS + 180)
    took = time.monotonic() - killed
    await eventually(
        lambda: survivor not in flower_processes(str(port)),
        30,
        "the surviving SuperNode ended with the run",
    )
    return record, took


@pytest.mark.timeout(400)  # a real Flower run: ~80 s here, more on a busy machine
async def test_a_supernode_killed_mid_run_fails_the_run_naming_its_device(
    tmp_path: Path,
) -> None:
    arguments = [
        "num-server-rounds=100",  # still running when the node is killed
        "local-epochs=1",
        "agata.min-nodes=2",
        "agata.join-seconds=120",
        f"agata.lost-seconds={LOST_SECONDS:.0f}",
        "agata.poll-seconds=1",
    ]  # lost-nodes: the default, 0
    async with tls_run(tmp_path, arguments) as (cloud, port, _):
        record, took = await kill_mid_run(cloud, port)

    assert record["state"] == "failed", record["state_reason"]
    reason = record["state_reason"]
    assert "lost 1 node(s) mid-run, more than the 0 tolerated" in reason
    assert "device dev0" in reason and "dev1" not in reason
    # Flower's offline mark, then lost-seconds, then a poll: far from Flower's hour.
    assert took < FLOWER_OFFLINE_SECONDS + LOST_SECONDS + 60, f"ended {took:.0f} s after"
    assert flower_processes(str(port)) == []  # no SuperLink or SuperNode left


@pytest.mark.timeout(400)  # a real Flower run: ~120 s here, more on a busy machine
async def test_with_a_tolerance_of_one_the_run_finishes_on_the_remaining_node(
    tmp_path: Path,
) -> None:
    arguments = [
        "num-server-rounds=3",
        "local-epochs=1",
        "min-nodes=1",  # the strategy goes on with one node
        "agata.min-nodes=2",
        "agata.join-seconds=120",
        "agata.lost-nodes=1",
        f"agata.lost-seconds={LOST_SECONDS:.0f}",
        "agata.poll-seconds=1",
    ]
    async with tls_run(tmp_path, arguments) as (cloud, port, _):
        record, _ = await kill_mid_run(cloud, port)
        rounds = await server_rounds(cloud, "app")

    assert record["state"] == "finished", record["state_reason"]
    assert "completed" in record["state_reason"]
    assert rounds == {1, 2, 3}
    assert flower_processes(str(port)) == []
