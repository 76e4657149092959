"""Request strings the store cannot keep are refused by the protocol models themselves.

NUL characters in any string (PostgreSQL refuses them; SQLite would keep them), empty or
over-long hosts and metric names, a file listed twice in a bundle listing: each is a 400
(``INVALID_ARGUMENT`` on the bus) whose reason names the field, over the bus (the
services validate) and over HTTP (the gateway validates before forwarding), and nothing
is written - checked on the real PostgreSQL too. The published JSON schemas say the same,
so generated clients and schemathesis (``tests/security``) know it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloud_harness import Cloud, running_cloud

from agata.bus.rpc import RpcClient
from agata.errors import AgataError, ErrorCode
from agata.protocol import operations as ops
from agata.store.store import Store

NUL = "\x00"
SHA = "0" * 64
TASK = {"task_id": "t1", "host": "127.0.0.1", "port": 8080}
REPORT = {"user_id": "d1", "task_id": "t1", "status": "running"}

#: (operation, body, the reason's start after "invalid arguments: ")
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    (ops.CREATE_TASK, {**TASK, "host": f"a{NUL}b"}, "host: must not contain NUL"),
    (ops.CREATE_TASK, {**TASK, "username": NUL}, "username: must not contain NUL"),
    (ops.CREATE_TASK, {**TASK, "password": f"p{NUL}"}, "password: must not contain NUL"),
    (ops.CREATE_TASK, {**TASK, "files_paths": [f"a{NUL}"]}, "files_paths.0: must not contain"),
    (
        ops.CREATE_TASK,
        {**TASK, "selection_criteria": f"data_qnt > 1{NUL}"},
        "selection_criteria: must not contain NUL",
    ),
    (ops.CREATE_TASK, {**TASK, "client_arguments": ["-x", NUL]}, "client_arguments.1: must not"),
    (ops.CREATE_TASK, {**TASK, "server_arguments": f"-x a{NUL}"}, "server_arguments.1: must not"),
    (ops.CREATE_TASK, {**TASK, "tags": [f"t{NUL}"]}, "tags.0: must not contain NUL"),
    (ops.CREATE_TASK, {**TASK, "host": ""}, "host: String should have at least 1 character"),
    (ops.CREATE_TASK, {**TASK, "host": "h" * 256}, "host: String should have at most 255"),
    (ops.CREATE_TASK, {**TASK, "username": "u" * 256}, "username: String should have at most"),
    (ops.UPDATE_TASK, {"task_id": "t1", "host": NUL}, "host: must not contain NUL"),
    (ops.UPDATE_TASK, {"task_id": "t1", "host": ""}, "host: String should have at least 1"),
    (ops.START_TASK, {"task_id": "t1", "arguments": [NUL]}, "arguments.0: must not contain NUL"),
    (
        ops.SET_TASK_FILES,
        {"task_id": "t1", "files": [{"name": f"a{NUL}.py", "size": 1, "sha256": SHA}]},
        "files.0.name: must not contain NUL",
    ),
    (
        ops.SET_TASK_FILES,
        {"task_id": "t1", "files": [{"name": "a.py", "size": 1, "sha256": SHA}] * 2},
        "files: file 'a.py' is listed twice",
    ),
    (
        ops.VALIDATE_CRITERIA,
        {"selection_criteria": f"data_qnt > 1{NUL}"},
        "selection_criteria: must not contain NUL",
    ),
    (ops.UPDATE_USER_INFO, {"user_id": "d1", "sensors": ["a", NUL]}, "sensors.1: must not"),
    (ops.UPDATE_USER_INFO, {"user_id": "d1", "extra": {"k": f"v{NUL}"}}, "extra.k: must not"),
    (
        ops.UPDATE_USER_INFO,
        {"user_id": "d1", "extra": {f"k{NUL}": "v"}},
        "extra.'k\\x00'.[key]: must not contain NUL",
    ),
    (ops.REPORT_DEVICE_TASK, {**REPORT, "reason": f"r{NUL}"}, "reason: must not contain NUL"),
    (
        ops.REPORT_DEVICE_TASK,
        {**REPORT, "metrics": {f"acc{NUL}": 0.5}},
        "metrics.'acc\\x00'.[key]: must not contain NUL",
    ),
    (
        ops.REPORT_DEVICE_TASK,
        {**REPORT, "metrics": {"": 0.5}},
        "metrics.''.[key]: String should have at least 1 character",
    ),
    (
        ops.ENROLL_DEVICE,
        {"user_id": "d2", "enrollment_token": f"agata_enr_{NUL}abcdefgh"},
        "enrollment_token: must not contain NUL",
    ),
]
#: Internal operations: only on the bus.
REFUSED_ON_THE_BUS = [
    (
        ops.CHECK_DOWNLOAD_PASSWORD,
        {"task_id": "t1", "username": f"u{NUL}", "password": "p"},
        "username: must not contain NUL",
    ),
]


def case_id(case: tuple[str, dict[str, Any], str]) -> str:
    return f"{case[0].removeprefix('rpc_exec_')}-{case[2].split(':')[0]}"


def written(store: Store) -> dict[str, Any]:
    """What a refused request could have changed, as comparable data."""
    tasks, devices = store.list_tasks(), store.list_devices()
    return {
        "tasks": repr(tasks),
        "devices": repr(devices),
        "device tasks": [repr(store.list_device_tasks(d.user_id)) for d in devices],
        "metrics": [repr(store.list_metrics(t.task_id)) for t in tasks],
    }


@pytest.mark.parametrize("case", REFUSED + REFUSED_ON_THE_BUS, ids=case_id)
async def test_refused_over_the_bus(cloud: Cloud, case: tuple[str, dict[str, Any], str]) -> None:
    operation, body, reason = case
    rpc = RpcClient(cloud.node.bus, timeout=5)
    before = written(cloud.node.store)

    with pytest.raises(AgataError) as refused:
        await rpc.call(operation, body)

    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    assert refused.value.message.startswith(f"invalid arguments: {reason}"), refused.value.message
    assert written(cloud.node.store) == before


@pytest.mark.parametrize("case", REFUSED, ids=case_id)
async def test_refused_over_http(cloud: Cloud, case: tuple[str, dict[str, Any], str]) -> None:
    operation, body, reason = case
    before = written(cloud.node.store)

    response = await cloud.op(operation, body)

    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith(f"invalid arguments: {reason}"), response.text
    assert written(cloud.node.store) == before


@pytest.mark.postgres
async def test_nothing_is_written_to_postgresql(tmp_path: Path, pg_schema_url: str) -> None:
    async with running_cloud(tmp_path, db_url=pg_schema_url) as cloud:
        # Prepare: a task and a device, so updates and reports have something to change.
        created = await cloud.op(ops.CREATE_TASK, {**TASK, "tags": ["a"]})
        reported = await cloud.op(ops.UPDATE_USER_INFO, {"user_id": "d1", "extra": {"k": "v"}})
        assert (created.status_code, reported.status_code) == (200, 200)
        before = written(cloud.node.store)

        # Execute: every refused request, then a valid twin of the first one.
        answers = [(await cloud.op(op, body)).status_code for op, body, _reason in REFUSED]
        after_refused = written(cloud.node.store)
        valid = await cloud.op(ops.UPDATE_USER_INFO, {"user_id": "d1", "extra": {"k": "v2"}})

        # Assert: all 400, nothing changed; the valid twin was written (the check sees).
        assert answers == [400] * len(REFUSED)
        assert after_refused == before
        assert valid.status_code == 200, valid.text
        assert cloud.node.store.get_device("d1").extra == {"k": "v2"}
        assert written(cloud.node.store) != before


def schema_nodes(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every sub-schema of a JSON schema, with its place."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from schema_nodes(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from schema_nodes(value, f"{where}.{index}")


@pytest.mark.parametrize("operation", sorted(ops.OPERATION_MODELS))
def test_every_request_schema_says_no_nul(operation: str) -> None:
    schema = ops.OPERATION_MODELS[operation].model_json_schema()

    nodes = list(schema_nodes(schema))
    strings = [
        (where, node)
        for where, node in nodes
        if node.get("type") == "string" or where.endswith(".propertyNames")
    ]
    objects = [(where, node) for where, node in nodes if node.get("additionalProperties")]

    for where, node in strings:
        if "enum" in node or "const" in node:  # one of listed words (sort keys): no NUL
            assert all(NUL not in word for word in node.get("enum", [node.get("const")])), where
        elif "pattern" in node:  # the pattern itself refuses a NUL
            assert re.search(node["pattern"], f"a{NUL}b") is None, where
        else:  # a dict key: "not" a string with a NUL
            assert re.search(node["not"]["pattern"], f"a{NUL}b"), where
    for where, node in objects:  # a dict says what its keys may be
        assert "propertyNames" in node, where
