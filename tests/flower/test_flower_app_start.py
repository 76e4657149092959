"""Starting a flower-app task: what is refused before any Flower process runs."""

from __future__ import annotations

import socket
from pathlib import Path

from cloud_harness import running_cloud
from flower_harness import FLOWER_CLOUD, app_files, create_app_task, free_port, task_record

from agata.edge.credential import enroll_device


async def test_a_bundle_without_the_app_components_is_a_400_naming_them(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, **FLOWER_CLOUD) as cloud:
        files = app_files()
        files["pyproject.toml"] = files["pyproject.toml"].replace(
            b'clientapp = "client_app:app"', b""
        )
        await create_app_task(cloud, "app", files, port=free_port())

        reply = await cloud.op("rpc_exec_start_server_task", {"task_id": "app"})

        assert reply.status_code == 400
        assert "no clientapp" in reply.text
        assert (await task_record(cloud, "app"))["running"] is False


async def test_a_taken_port_is_a_409_naming_it_and_nothing_runs(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, **FLOWER_CLOUD) as cloud:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            await create_app_task(cloud, "app", app_files(), port=port)

            reply = await cloud.op("rpc_exec_start_server_task", {"task_id": "app"})

        assert reply.status_code == 409
        assert f"port {port} on 127.0.0.1 is taken" in reply.text
        record = await task_record(cloud, "app")
        assert (record["running"], record["state"]) == (False, "failed")
        assert "is taken" in record["state_reason"]


async def test_off_loopback_without_the_clouds_certificate_is_a_400(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, **FLOWER_CLOUD) as cloud:
        await create_app_task(cloud, "app", app_files(), port=free_port())
        await cloud.op("rpc_exec_update_task", {"task_id": "app", "host": "0.0.0.0"})

        reply = await cloud.op("rpc_exec_start_server_task", {"task_id": "app"})

        assert reply.status_code == 400
        assert "needs the cloud's TLS certificate" in reply.text


async def test_only_a_matching_device_may_register_a_node_key(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, **FLOWER_CLOUD) as cloud:
        await create_app_task(cloud, "app", app_files(), port=free_port(), criteria="data_qnt > 50")
        tokens = []
        for user_id, data_qnt in (("big", 100), ("small", 10)):
            token = (await cloud.op("rpc_exec_create_enrollment_token", {})).json()
            credential = await enroll_device(
                cloud.node.url, user_id, token["enrollment_token"], tmp_path / user_id
            )
            info = {"user_id": user_id, "data_qnt": data_qnt, "sensors": []}
            await cloud.op("rpc_exec_update_user_info", info, token=credential)
            tokens.append(credential)
        key = "ecdsa-sha2-nistp384 AAAA"
        body = {"task_id": "app", "public_key": key}

        not_running = await cloud.op(
            "rpc_exec_register_flower_node", {**body, "user_id": "big"}, token=tokens[0]
        )
        other = await cloud.op(
            "rpc_exec_register_flower_node", {**body, "user_id": "big"}, token=tokens[1]
        )

        assert not_running.status_code == 409
        assert "not a running flower-app task" in not_running.text
        assert other.status_code == 403  # a device may only act for itself
