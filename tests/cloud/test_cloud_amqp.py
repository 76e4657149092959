"""The cloud on a real RabbitMQ, spoken to exactly like the original system did."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from agata.bus import RpcClient, create_bus
from agata.cloud.cloud_node import CloudNode
from agata.settings import load_settings


@pytest.fixture
async def amqp_cloud(tmp_path: Path, amqp_url: str) -> AsyncIterator[CloudNode]:
    settings = load_settings(
        flags={"data_dir": tmp_path / "cloud", "bus_url": amqp_url, "gateway_port": 0},
        environ={},
    )
    node = CloudNode(settings)
    await node.start()
    yield node
    await node.stop()


async def original_call(url: str, operation: str, body: dict[str, Any]) -> dict[str, Any]:
    """What the original RpcClient did: exclusive reply queue, uuid, type = operation."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue("", exclusive=True)
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
                if message.correlation_id == correlation_id:
                    await message.ack()
                    return dict(json.loads(message.body))
    raise AssertionError("no reply")


async def test_original_client_gets_original_replies(amqp_cloud: CloudNode, amqp_url: str) -> None:
    task_id = f"orig{uuid.uuid4().hex[:8]}"
    create = {
        "task_id": task_id,
        "host": "localhost",
        "port": 8080,
        "username": "u",
        "password": "p",
        "files_paths": [],
        "selection_criteria": "data_qnt > 5",
        "server_arguments": "",
        "client_arguments": "",
        "tags": ["mnist"],
    }

    created = await original_call(amqp_url, "rpc_exec_create_task", create)
    fetched = await original_call(amqp_url, "rpc_exec_get_task_by_id", {"task_id": task_id})
    duplicate = await original_call(amqp_url, "rpc_exec_create_task", create)
    user = await original_call(
        amqp_url,
        "rpc_exec_update_user_info",
        {"user_id": "veh-1", "data_qnt": 323, "sensors": ["camera", "ecu"]},
    )
    offers = await original_call(amqp_url, "rpc_exec_client_requesting_task", {"user_id": "veh-1"})

    assert created == {"status_code": 200, "return": None}
    assert fetched["status_code"] == 200
    assert fetched["return"]["ID"] == task_id
    assert fetched["return"]["tags"] == ["mnist"]
    assert fetched["return"]["running"] is False
    assert duplicate["status_code"] == 409
    assert user == {"status_code": 200, "return": None}
    assert offers == {"status_code": 200, "return": []}  # the task is not running


async def test_our_client_calls_an_original_style_service(amqp_url: str) -> None:
    """A service that answers like the original BaseService (pika, reply props = corr id)."""
    queue_name = f"rpc_exec_original_{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(queue_name)

    async def serve(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        request = json.loads(message.body)
        reply = {"status_code": 200, "return": {"echo": request, "type": message.type}}
        await channel.default_exchange.publish(
            aio_pika.Message(json.dumps(reply).encode(), correlation_id=message.correlation_id),
            routing_key=message.reply_to or "",
        )
        await message.ack()

    await queue.consume(serve)
    bus = create_bus(amqp_url)
    await bus.connect()
    try:
        result = await RpcClient(bus, timeout=5).call(queue_name, {"x": 1})
    finally:
        await bus.close()
        await connection.close()

    assert result == {"echo": {"x": 1}, "type": queue_name}


async def test_gateway_on_amqp_serves_operations(amqp_cloud: CloudNode) -> None:
    import httpx

    token = amqp_cloud.ensure_operator_token()
    async with httpx.AsyncClient(base_url=amqp_cloud.url, timeout=10) as http:
        response = await http.post(
            "/rpc_exec_list_tasks", json={}, headers={"Authorization": f"Bearer {token}"}
        )

    assert response.status_code == 200
    assert isinstance(response.json(), list)
    await asyncio.sleep(0)


async def test_concurrent_uploads_of_one_task_record_every_file(amqp_cloud: CloudNode) -> None:
    """Uploads of one task take turns: the recorded listing is the bundle on disk."""
    import hashlib

    import httpx

    token = amqp_cloud.ensure_operator_token()
    headers = {"Authorization": f"Bearer {token}"}
    task = {"task_id": "up", "host": "127.0.0.1", "port": 8080, "username": "",
            "password": "", "files_paths": [], "selection_criteria": ""}  # fmt: skip
    contents = {f"f{i:02d}.py": f"# file {i}\n".encode() * (i + 1) for i in range(12)}
    async with httpx.AsyncClient(base_url=amqp_cloud.url, timeout=10, headers=headers) as http:
        created = await http.post("/rpc_exec_create_task", json=task)
        assert created.status_code == 200, created.text
        uploads = await asyncio.gather(
            *(
                http.post("/api/tasks/up/files", files=[("files", (name, data))])
                for name, data in contents.items()
            )
        )
        recorded = (await http.get("/api/tasks/up/files")).json()

    assert [u.status_code for u in uploads] == [200] * len(contents), [u.text for u in uploads]
    assert {f["name"]: f["sha256"] for f in recorded} == {
        name: hashlib.sha256(data).hexdigest() for name, data in contents.items()
    }


async def test_services_in_separate_nodes_with_replicas(tmp_path: Path, amqp_url: str) -> None:
    """Like `agata cloud run --service X` in separate processes, sharing broker and store."""
    import httpx

    flags = {"data_dir": tmp_path / "shared", "bus_url": amqp_url, "gateway_port": 0}
    settings = load_settings(flags=flags, environ={})
    nodes = [
        CloudNode(settings, services=["task-manager"]),
        CloudNode(settings, services=["task-manager"]),  # a replica
        CloudNode(settings, services=["device-registry"]),
        CloudNode(settings, services=["gateway"]),
    ]
    for node in nodes:
        await node.start()
    gateway = nodes[-1]
    token = gateway.ensure_operator_token()
    task_ids = [f"sep{uuid.uuid4().hex[:6]}{i}" for i in range(6)]
    try:
        async with httpx.AsyncClient(
            base_url=gateway.url, timeout=10, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            for task_id in task_ids:
                created = await http.post(
                    "/rpc_exec_create_task",
                    json={"task_id": task_id, "host": "h", "port": 1, "files_paths": []},
                )
                assert created.status_code == 200, created.text
            device = await http.post(
                "/rpc_exec_update_user_info", json={"user_id": "sep-dev", "data_qnt": 3}
            )
            listed = (await http.post("/rpc_exec_list_tasks", json={})).json()
    finally:
        for node in reversed(nodes):
            await node.stop()

    assert device.status_code == 200
    assert set(task_ids) <= {t["ID"] for t in listed}


async def test_a_device_change_reaches_every_task_manager_replica(
    tmp_path: Path, amqp_url: str
) -> None:
    """Task managers reuse device attributes; the registry's notification (another
    node) ends that before the device's next request reaches any replica."""
    import httpx

    flags = {"data_dir": tmp_path / "shared", "bus_url": amqp_url, "gateway_port": 0}
    settings = load_settings(flags=flags, environ={})
    nodes = [
        CloudNode(settings, services=["task-manager"]),
        CloudNode(settings, services=["task-manager"]),
        CloudNode(settings, services=["device-registry"]),
        CloudNode(settings, services=["gateway"]),
    ]
    for node in nodes:
        await node.start()
    token = nodes[-1].ensure_operator_token()
    task_id = f"chg{uuid.uuid4().hex[:6]}"
    user_id = f"chg-dev-{uuid.uuid4().hex[:6]}"
    server = b"import time\ntime.sleep(600)\n"
    seen = []
    try:
        async with httpx.AsyncClient(
            base_url=nodes[-1].url, timeout=10, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            created = await http.post(
                "/rpc_exec_create_task",
                json={"task_id": task_id, "host": "h", "port": 1, "files_paths": [],
                      "selection_criteria": "data_qnt > 50"},
            )  # fmt: skip
            assert created.status_code == 200, created.text
            files = [("files", ("server.py", server)), ("files", ("client.py", b"\n"))]
            uploaded = await http.post(f"/api/tasks/{task_id}/files", files=files)
            assert uploaded.status_code == 200, uploaded.text
            started = await http.post("/rpc_exec_start_server_task", json={"task_id": task_id})
            assert started.status_code == 200, started.text
            for data_qnt in (100, 1, 100, 1, 100, 1):
                body = {"user_id": user_id, "data_qnt": data_qnt}
                assert (await http.post("/rpc_exec_update_user_info", json=body)).is_success
                for _ in range(2):  # the queue's replicas take turns
                    offers = await http.post(
                        "/rpc_exec_client_requesting_task", json={"user_id": user_id}
                    )
                    seen.append([o["ID"] for o in offers.json()])
            await http.post("/rpc_exec_stop_server_task", json={"task_id": task_id})
    finally:
        for node in reversed(nodes):
            await node.stop()

    assert seen == [[task_id], [task_id], [], []] * 3
