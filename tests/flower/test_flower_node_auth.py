"""Only selected nodes join: with the cloud's certificate the run's SuperLink serves TLS
and SuperNode authentication, and AGATA registers the keys of matching devices only."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import httpx
import pytest
from cloud_harness import Cloud, cloud_settings
from flower_harness import (
    FLOWER_CLOUD,
    app_files,
    create_app_task,
    ended,
    flower_processes,
    free_port,
    make_agent,
    running_agents,
)
from tls_certs import make_certificates

from agata.cloud.cloud_node import CloudNode
from agata.edge.credential import enroll_device
from agata.flower.flwr_cli import flower_bin, flower_environment
from agata.flower.node_keys import make_node_key
from agata.flower.supernode import supernode_arguments


@pytest.mark.timeout(400)  # a real Flower run: ~90 s here, more on a busy machine
async def test_an_unregistered_node_cannot_join_and_a_matching_device_can(
    tmp_path: Path,
) -> None:
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
    token = await asyncio.to_thread(node.ensure_operator_token)
    assert token
    rogue: asyncio.subprocess.Process | None = None
    try:
        verify = ssl.create_default_context(cafile=str(certs.ca))
        async with httpx.AsyncClient(base_url=node.url, verify=verify, timeout=30) as http:
            cloud = Cloud(node, http, token)
            port = free_port()
            await create_app_task(
                cloud,
                "app",
                app_files(),
                port=port,
                criteria="data_qnt > 50",
                server_arguments=[
                    "num-server-rounds=1",
                    "min-nodes=1",
                    "agata.min-nodes=1",
                    "agata.join-seconds=10",
                    "agata.poll-seconds=1",
                ],
                client_arguments=["partition-id=0", "num-partitions=1"],
            )
            enrollment = (await cloud.op("rpc_exec_create_enrollment_token", {})).json()
            small = await enroll_device(
                node.url,
                "small",
                enrollment["enrollment_token"],
                tmp_path / "small",
                ca_file=certs.ca,
            )
            small_info = {"user_id": "small", "data_qnt": 10, "sensors": []}
            await cloud.op("rpc_exec_update_user_info", small_info, token=small)

            # Run 1: only a node nobody registered (its own key) tries the run's port.
            started = await cloud.op("rpc_exec_start_server_task", {"task_id": "app"})
            assert started.status_code == 200, started.text
            (tmp_path / "rogue").mkdir()
            key, public = make_node_key(tmp_path / "rogue")
            arguments = supernode_arguments(
                f"127.0.0.1:{port}",
                "partition-id=0 num-partitions=1",
                port=free_port(),
                tls=True,
                root_certificates=certs.ca,
                private_key=key,
            )
            rogue = await asyncio.create_subprocess_exec(
                flower_bin("flower-supernode"),
                *arguments,
                env={**os.environ, **flower_environment(tmp_path / "rogue" / "home")},
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            refused = await cloud.op(
                "rpc_exec_register_flower_node",
                {"user_id": "small", "task_id": "app", "public_key": public},
                token=small,
            )
            first = await ended(cloud, "app", timeout=120)

            # Run 2: a matching device, through its agent.
            agent = await make_agent(cloud, tmp_path, "big", ca_file=certs.ca)
            async with running_agents(agent):
                started = await cloud.op("rpc_exec_start_server_task", {"task_id": "app"})
                assert started.status_code == 200, started.text
                second = await ended(cloud, "app", timeout=180)
    finally:
        if rogue is not None and rogue.returncode is None:
            rogue.kill()
            await rogue.wait()
        await node.stop()

    assert refused.status_code == 403
    assert "does not meet the selection criteria" in refused.text
    assert first["state"] == "failed"
    assert "only 0 of the 1 nodes needed joined" in first["state_reason"]
    assert second["state"] == "finished", second["state_reason"]
    assert flower_processes(str(port)) == []
