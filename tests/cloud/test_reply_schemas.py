"""Every operation's reply is described in ``/openapi.json`` (issue 15: the gateway
declares its reply models), and the real replies of a running cloud validate against
those schemas, with no field the schema does not name."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import jsonschema_rs
from cloud_harness import Cloud, create_bundle_task, running_cloud
from pydantic import TypeAdapter

from agata.bus.rpc import RpcClient
from agata.cloud.credentials.tokens import OPERATOR_PREFIX, hash_token, new_token
from agata.cloud.gateway.app import INTERNAL_OPERATIONS
from agata.protocol import operations as ops
from agata.protocol.replies import OPERATION_REPLIES


def strict(schema: Any) -> Any:
    """``schema`` where an object that names its properties allows no other field (a
    model that takes others, such as an event's data, says so: additionalProperties)."""
    if isinstance(schema, dict):
        result = {key: strict(value) for key, value in schema.items()}
        if "properties" in result and "additionalProperties" not in result:
            result["additionalProperties"] = False
        return result
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def reply_schema(document: dict[str, Any], path: str, method: str = "post") -> dict[str, Any]:
    schema: dict[str, Any] = document["paths"][path][method]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]
    return schema


def check(document: dict[str, Any], path: str, reply: Any, method: str = "post") -> list[str]:
    """What is wrong with ``reply`` by the published schema of ``path`` (nothing: [])."""
    schema = reply_schema(document, path, method)
    root = {**strict(schema), "components": strict(copy.deepcopy(document["components"]))}
    validator = jsonschema_rs.validator_for(root)
    return [f"{path}: {error}" for error in validator.iter_errors(reply)]


async def call(cloud: Cloud, replies: dict[str, Any], name: str, body: dict[str, Any]) -> Any:
    response = await cloud.op(name, body)
    assert response.status_code == 200, (name, response.text)
    replies[name] = response.json()
    return replies[name]


async def all_replies(cloud: Cloud) -> dict[str, Any]:
    """A real reply of every operation callable over HTTP, in an order that gives each
    something to say."""
    replies: dict[str, Any] = {}
    op = cloud.op

    async def run(name: str, body: dict[str, Any]) -> Any:
        return await call(cloud, replies, name, body)

    await create_bundle_task(
        cloud, "t1", server_arguments=["1", "--hold"], selection_criteria="data_qnt > 50",
        tags=["digits"], limits={"memory_mb": 512},
    )  # fmt: skip
    replies[ops.CREATE_TASK] = None  # create_bundle_task checked its 200 (body: null)
    assert (await op(ops.CREATE_TASK, {"task_id": "t0", "host": "h", "port": 1})).json() is None
    await run(ops.UPDATE_TASK, {"task_id": "t1", "client_arguments": ["--lr", "0.1"]})
    listing = (await cloud.http.get("/api/tasks/t1/files", headers=cloud.auth)).json()
    await run(ops.SET_TASK_FILES, {"task_id": "t1", "files": listing})
    await run(ops.START_TASK, {"task_id": "t1"})
    await run(ops.UPDATE_USER_INFO, {"user_id": "pi-1", "data_qnt": 100, "sensors": ["cam"]})
    await run(ops.UPDATE_USER_INFO, {"user_id": "pi-1", "extra": {"room": "lab", "n": 2}})
    offers = await run(ops.CLIENT_REQUESTING_TASK, {"user_id": "pi-1"})
    assert [o["ID"] for o in offers] == ["t1"]
    report = {"user_id": "pi-1", "task_id": "t1", "status": "running"}
    await run(ops.REPORT_DEVICE_TASK, {**report, "round": 1, "metrics": {"acc": 0.5}})
    for _ in range(500):  # the server side's own metrics of round 1
        metrics = await run(ops.GET_TASK_METRICS, {"task_id": "t1"})
        if any(m["source"] == "server" for m in metrics):
            break
        await asyncio.sleep(0.02)
    await run(ops.GET_TASK_LOGS, {"task_id": "t1"})
    assert await run(ops.GET_TASK_EVENTS, {"task_id": "t1"})
    await run(ops.GET_TASK_DEVICES, {"task_id": "t1"})
    assert [r["run"] for r in await run(ops.LIST_RUNS, {"task_id": "t1"})] == [1]
    await run(ops.GET_RUN, {"task_id": "t1", "run": 1})
    await run(ops.GET_TASK, {"task_id": "t1"})
    await run(ops.LIST_TASKS, {})
    await run(ops.QUERY_TASKS, {"q": "running"})
    await run(ops.GET_USER_INFO, {"user_id": "pi-1"})
    await run(ops.LIST_DEVICES, {})
    await run(ops.QUERY_DEVICES, {"q": "data_qnt > 1"})
    await run(ops.VALIDATE_CRITERIA, {"selection_criteria": "data_qnt > 1"})
    invalid = await cloud.op(ops.VALIDATE_CRITERIA, {"selection_criteria": "data_qnt >"})
    replies["invalid criteria"] = invalid.json()
    await run(ops.GET_OVERVIEW, {})
    await run(ops.CLEAR_QUARANTINE, {"user_id": "pi-1"})
    token = await run(ops.CREATE_ENROLLMENT_TOKEN, {"uses": 2})
    enroll = {"user_id": "pi-2", "enrollment_token": token["enrollment_token"]}
    replies[ops.ENROLL_DEVICE] = (await op(ops.ENROLL_DEVICE, enroll, token=None)).json()
    enrolled = await cloud.http.post("/api/devices/enroll", json={**enroll, "user_id": "pi-3"})
    replies["/api/devices/enroll"] = enrolled.json()
    await run(ops.REVOKE_DEVICE, {"user_id": "pi-2"})
    await run(ops.LIST_ENROLLMENT_TOKENS, {})
    token_id = replies[ops.LIST_ENROLLMENT_TOKENS][0]["token_id"]
    await run(ops.REVOKE_ENROLLMENT_TOKEN, {"token_id": token_id})
    second = cloud.node.store.add_operator_token("second", hash_token(new_token(OPERATOR_PREFIX)))
    await run(ops.LIST_OPERATOR_TOKENS, {})
    await run(ops.REVOKE_OPERATOR_TOKEN, {"token_id": second.token_id})
    await run(ops.STOP_TASK, {"task_id": "t1"})
    await run(ops.DELETE_DEVICE, {"user_id": "pi-3"})
    await run(ops.DELETE_TASK, {"task_id": "t0"})
    return replies


async def test_every_reply_is_described_and_real_replies_hold_to_it(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        document = (await cloud.http.get("/openapi.json")).json()
        replies = await all_replies(cloud)
        health = (await cloud.http.get("/healthz")).json()
        files = (await cloud.http.get("/api/tasks/t1/files", headers=cloud.auth)).json()
        internal = {
            ops.RESOLVE_CREDENTIAL: {"token_sha256": hash_token(cloud.token)},
            ops.CHECK_DOWNLOAD_PASSWORD: {"task_id": "t1", "username": "u", "password": "p"},
        }
        rpc = RpcClient(cloud.node.bus)
        internal_replies = {name: await rpc.call(name, body) for name, body in internal.items()}

    # Every operation over HTTP has a reply schema, and each real reply holds to it
    public = set(ops.OPERATION_MODELS) - INTERNAL_OPERATIONS
    assert set(replies) >= public
    for name in sorted(public):
        assert reply_schema(document, f"/{name}"), f"{name}: no reply schema"
    problems = [p for name in sorted(public) for p in check(document, f"/{name}", replies[name])]
    problems += check(document, f"/{ops.VALIDATE_CRITERIA}", replies["invalid criteria"])
    problems += check(document, "/api/devices/enroll", replies["/api/devices/enroll"])
    problems += check(document, "/healthz", health, "get")
    problems += check(document, "/api/tasks/{task_id}/files", files, "get")
    assert problems == []
    # The gateway's own operations (never over HTTP) hold to their reply models too
    for name, reply in internal_replies.items():
        schema = TypeAdapter(OPERATION_REPLIES[name]).json_schema(mode="serialization")
        assert list(jsonschema_rs.validator_for(strict(schema)).iter_errors(reply)) == []


async def test_a_legacy_devices_offers_hold_to_the_offer_schema(tmp_path: Path) -> None:
    """The offer to a device of the original system carries the task's download
    username and a password: both are in the schema."""
    async with running_cloud(tmp_path, legacy_devices=True) as cloud:
        document = (await cloud.http.get("/openapi.json")).json()
        await create_bundle_task(cloud, "t1", server_arguments=["1", "--hold"])
        await cloud.op(ops.START_TASK, {"task_id": "t1"})
        await cloud.op(ops.UPDATE_USER_INFO, {"user_id": "old-1"}, token=None)
        poll = await cloud.op(ops.CLIENT_REQUESTING_TASK, {"user_id": "old-1"}, token=None)
        await cloud.op(ops.STOP_TASK, {"task_id": "t1"})

    offers = poll.json()
    assert [(o["ID"], o["username"], bool(o["password"])) for o in offers] == [("t1", "u", True)]
    assert check(document, f"/{ops.CLIENT_REQUESTING_TASK}", offers) == []
