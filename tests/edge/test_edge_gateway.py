"""The edge gateway: an original agent's bus calls reach the real cloud over HTTP."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from cloud_harness import Cloud, running_cloud

from agata.bus import RpcClient, create_bus
from agata.edge.cloud_client import CloudClient
from agata.edge.edge_gateway import EdgeGateway
from agata.errors import AgataError, ErrorCode
from edge.conftest import create_task


async def test_the_original_agents_calls_are_forwarded(tmp_path: Path) -> None:
    # Prepare: a cloud that lets original devices in, a device broker and its gateway
    async with running_cloud(tmp_path, legacy_devices=True) as cloud:
        await create_task(cloud, "t1", "hold", criteria='"camera" in sensors')
        bus = create_bus("memory://")
        await bus.connect()
        async with CloudClient(cloud.node.url) as client:
            gateway = EdgeGateway(bus, client)
            await gateway.start()
            rpc = RpcClient(bus, timeout=5)
            try:
                # Execute: what the original client task manager sent
                await rpc.call(
                    "rpc_exec_update_user_info", {"user_id": "old-dev", "sensors": ["camera"]}
                )
                offers = await rpc.call("rpc_exec_client_requesting_task", {"client_id": "old-dev"})
                with pytest.raises(AgataError) as invalid:
                    await rpc.call("rpc_exec_client_requesting_task", {"nobody": 1})
                with pytest.raises(AgataError) as unknown:
                    await rpc.call("rpc_exec_client_requesting_task", {"user_id": "ghost"})
            finally:
                await gateway.stop()
                await bus.close()

    # Assert: the answers the original expects, in the bus wire format
    assert [o["ID"] for o in offers] == ["t1"]
    assert offers[0]["username"] == "user-t1"  # legacy devices download with it
    assert invalid.value.code is ErrorCode.INVALID_ARGUMENT
    assert unknown.value.code is ErrorCode.NOT_FOUND
    assert "not registered" in unknown.value.message
    assert gateway.forwarded == 2


async def test_an_enrolled_gateway_gets_offers_in_the_original_form(tmp_path: Path) -> None:
    # Prepare: the gateway holds a device credential; the original agent behind it
    # still needs a download password and its client arguments expanded.
    async with running_cloud(tmp_path, legacy_devices=True) as cloud:
        await create_task(
            cloud, "t1", "hold", client_arguments=["--address", "{host}:{port}", "--id={user_id}"]
        )
        enrollment = (await cloud.op("rpc_exec_create_enrollment_token", {})).json()
        enrolled = await cloud.http.post(
            "/api/devices/enroll",
            json={"user_id": "old-dev", "enrollment_token": enrollment["enrollment_token"]},
        )
        bus = create_bus("memory://")
        await bus.connect()
        async with CloudClient(cloud.node.url, credential=enrolled.json()["credential"]) as client:
            gateway = EdgeGateway(bus, client)
            await gateway.start()
            rpc = RpcClient(bus, timeout=5)
            try:
                # Execute
                await rpc.call("rpc_exec_update_user_info", {"user_id": "old-dev"})
                offers = await rpc.call("rpc_exec_client_requesting_task", {"client_id": "old-dev"})
            finally:
                await gateway.stop()
                await bus.close()

    # Assert
    assert offers[0]["client_arguments"] == "--address 127.0.0.1:8080 --id=old-dev"
    assert offers[0]["password"].startswith("agata-dl:old-dev:")  # made for it, not pass-t1


async def test_without_legacy_devices_the_cloud_refuses_anonymous_calls(cloud: Cloud) -> None:
    bus = create_bus("memory://")
    await bus.connect()
    async with CloudClient(cloud.node.url) as client:
        gateway = EdgeGateway(bus, client)
        await gateway.start()
        try:
            with pytest.raises(AgataError) as caught:
                await RpcClient(bus, timeout=5).call(
                    "rpc_exec_update_user_info", {"user_id": "old-dev"}
                )
        finally:
            await gateway.stop()
            await bus.close()

    assert caught.value.code is ErrorCode.UNAUTHENTICATED


async def test_device_enroll_command_stores_the_credential(cloud: Cloud, tmp_path: Path) -> None:
    response = await cloud.op("rpc_exec_create_enrollment_token", {})
    token = response.json()["enrollment_token"]
    data_dir = tmp_path / "device"

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agata",
        "device",
        "enroll",
        "--cloud-url",
        cloud.node.url,
        "--user-id",
        "dev7",
        "--enrollment-token",
        token,
        "--data-dir",
        str(data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 0, err.decode()
    assert b"dev7 enrolled" in out
    credential = json.loads((data_dir / "edge" / "credential").read_text())
    assert credential["user_id"] == "dev7"
    assert credential["credential"].encode() not in out + err  # never printed
    response = await cloud.http.post(
        "/rpc_exec_update_user_info",
        json={"user_id": "dev7"},
        headers={"Authorization": f"Bearer {credential['credential']}"},
    )
    assert response.status_code == 200
    response = await cloud.http.post(
        "/rpc_exec_update_user_info",
        json={"user_id": "someone-else"},
        headers={"Authorization": f"Bearer {credential['credential']}"},
    )
    assert response.status_code == 403


@pytest.mark.amqp
async def test_an_original_client_on_rabbitmq_gets_the_clouds_answers(
    tmp_path: Path, amqp_url: str
) -> None:
    """The device broker of the original deployment: a raw AMQP client as the original
    agent wrote it (reply_to, correlation_id, type), the gateway, and the real cloud."""
    import uuid

    import aio_pika

    async with running_cloud(tmp_path, legacy_devices=True) as cloud:
        await create_task(cloud, "t1", "hold")
        bus = create_bus(amqp_url)
        await bus.connect()
        async with CloudClient(cloud.node.url) as client:
            gateway = EdgeGateway(bus, client)
            await gateway.start()
            connection = await aio_pika.connect(amqp_url)
            try:
                channel = await connection.channel()
                replies = await channel.declare_queue(exclusive=True)

                async def call(operation: str, body: dict[str, object]) -> dict[str, object]:
                    correlation_id = str(uuid.uuid4())
                    await channel.default_exchange.publish(
                        aio_pika.Message(
                            json.dumps(body).encode(),
                            reply_to=replies.name,
                            correlation_id=correlation_id,
                            type=operation,
                        ),
                        routing_key=operation,
                    )
                    async with replies.iterator(timeout=10) as messages:
                        async for message in messages:
                            await message.ack()
                            if message.correlation_id == correlation_id:
                                reply: dict[str, object] = json.loads(message.body)
                                return reply
                    raise AssertionError("no reply")

                updated = await call(
                    "rpc_exec_update_user_info", {"user_id": "old-dev", "data_qnt": 5}
                )
                offered = await call("rpc_exec_client_requesting_task", {"client_id": "old-dev"})
                refused = await call("rpc_exec_client_requesting_task", {})
            finally:
                await connection.close()
                await gateway.stop()
                await bus.close()

    assert updated == {"status_code": 200, "return": None}
    assert offered["status_code"] == 200
    assert [o["ID"] for o in offered["return"]] == ["t1"]  # type: ignore[union-attr,index]
    assert refused["status_code"] == 400
