"""The cloud through its HTTP gateway: operations, auth, files, server-side tasks."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from cloud_harness import CLIENT_PY, Cloud, create_bundle_task

TASK = {
    "task_id": "4fe5",
    "host": "127.0.0.1",
    "port": 8080,
    "username": "user",
    "password": "secret",
    "files_paths": [],
    "selection_criteria": '(data_qnt > 50) and ("camera" in sensors)',
    "server_arguments": "--rounds 3",
    "tags": ["digits"],
}


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_operations_need_an_operator_token(cloud: Cloud) -> None:
    anonymous = await cloud.op("rpc_exec_create_task", TASK, token=None)
    wrong = await cloud.op("rpc_exec_create_task", TASK, token="agata_op_nope")

    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert (await cloud.op("rpc_exec_list_tasks", {})).json() == []


async def test_create_get_update_keeps_running_and_metrics(cloud: Cloud) -> None:
    assert (await cloud.op("rpc_exec_create_task", TASK)).status_code == 200

    task = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "4fe5"})).json()
    update = await cloud.op("rpc_exec_update_task", {"task_id": "4fe5", "port": 9090})
    after = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "4fe5"})).json()

    assert task["ID"] == "4fe5"
    assert task["running"] is False
    assert task["server_argv"] == ["--rounds", "3"]
    assert "password" not in task
    assert update.status_code == 200
    assert after["port"] == 9090
    assert after["running"] is False
    assert after["selection_criteria"] == TASK["selection_criteria"]


async def test_create_errors_are_clear(cloud: Cloud) -> None:
    await cloud.op("rpc_exec_create_task", TASK)

    duplicate = await cloud.op("rpc_exec_create_task", TASK)
    traversal = await cloud.op("rpc_exec_create_task", {**TASK, "task_id": "../../etc"})
    escape = await cloud.op(
        "rpc_exec_create_task",
        {**TASK, "task_id": "evil", "selection_criteria": "().__class__.__base__.__subclasses__()"},
    )
    unknown_field = await cloud.op("rpc_exec_create_task", {**TASK, "task_id": "x", "bogus": 1})
    missing = await cloud.op("rpc_exec_get_task_by_id", {"task_id": "nope"})

    assert duplicate.status_code == 409
    assert traversal.status_code == 400
    assert "task_id" in traversal.json()["detail"]
    assert escape.status_code == 400
    assert unknown_field.status_code == 400
    assert missing.status_code == 404
    assert "nope" in missing.json()["detail"]


async def test_unknown_operation_fails_fast(cloud: Cloud) -> None:
    response = await cloud.op("rpc_exec_does_not_exist", {})
    internal = await cloud.op("rpc_exec_resolve_credential", {"token_sha256": "0" * 64})

    assert response.status_code == 404
    assert internal.status_code == 404


async def test_oversized_body_is_413(cloud: Cloud) -> None:
    response = await cloud.op("rpc_exec_list_tasks", {"padding": "x" * (2 * 1024 * 1024)})

    assert response.status_code == 413


async def test_non_json_body_is_400(cloud: Cloud) -> None:
    response = await cloud.http.post("/rpc_exec_list_tasks", content=b"{nope", headers=cloud.auth)

    assert response.status_code == 400


async def test_upload_rejects_traversal_and_writes_nothing(cloud: Cloud) -> None:
    await cloud.op("rpc_exec_create_task", TASK)
    files = [("files", ("ok.py", b"x")), ("files", ("../../../../tmp/x", b"evil"))]

    response = await cloud.http.post("/api/tasks/4fe5/files", files=files, headers=cloud.auth)
    listing = await cloud.http.get("/api/tasks/4fe5/files", headers=cloud.auth)

    assert response.status_code == 400
    assert listing.json() == []


async def test_start_needs_a_bundle(cloud: Cloud) -> None:
    await cloud.op("rpc_exec_create_task", TASK)

    response = await cloud.op("rpc_exec_start_server_task", {"task_id": "4fe5"})

    assert response.status_code == 400
    assert "server.py" in response.json()["detail"]


async def test_server_side_runs_reports_and_finishes(cloud: Cloud) -> None:
    await create_bundle_task(cloud, "t1", server_arguments=["2"])

    started = await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})

    async def finished() -> bool:
        task = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "t1"})).json()
        return task["state"] == "finished"

    await wait_for(finished)
    metrics = (await cloud.op("rpc_exec_get_task_metrics", {"task_id": "t1"})).json()
    task = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "t1"})).json()
    assert started.status_code == 200
    assert [m["round"] for m in metrics] == [1, 2]
    assert task["running"] is False
    assert task["last_round"] == 2
    assert task["last_acc"] == 0.7


async def test_start_stop_conflicts(cloud: Cloud) -> None:
    await create_bundle_task(cloud, "t2", server_arguments=["1", "--hold"])

    first = await cloud.op("rpc_exec_start_server_task", {"task_id": "t2"})
    second = await cloud.op("rpc_exec_start_server_task", {"task_id": "t2"})
    delete_running = await cloud.op("rpc_exec_delete_task", {"task_id": "t2"})
    stop = await cloud.op("rpc_exec_stop_server_task", {"task_id": "t2"})
    stop_again = await cloud.op("rpc_exec_stop_server_task", {"task_id": "t2"})
    task = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "t2"})).json()
    delete = await cloud.op("rpc_exec_delete_task", {"task_id": "t2"})

    assert first.status_code == 200
    assert second.status_code == 409
    assert delete_running.status_code == 409
    assert stop.status_code == 200
    assert stop_again.status_code == 409
    assert task["state"] == "stopped"
    assert delete.status_code == 200


async def enroll(cloud: Cloud, user_id: str) -> str:
    enrollment = (await cloud.op("rpc_exec_create_enrollment_token", {})).json()
    response = await cloud.http.post(
        "/api/devices/enroll",
        json={"user_id": user_id, "enrollment_token": enrollment["enrollment_token"]},
    )
    assert response.status_code == 200, response.text
    credential: str = response.json()["credential"]
    return credential


async def test_device_flow_with_credentials(cloud: Cloud) -> None:
    await create_bundle_task(
        cloud, "t3", server_arguments=["1", "--hold"], selection_criteria="data_qnt > 50"
    )
    await cloud.op("rpc_exec_start_server_task", {"task_id": "t3"})
    credential = await enroll(cloud, "pi-1")
    other = await enroll(cloud, "pi-2")
    device = {"Authorization": f"Bearer {credential}"}

    info = await cloud.op(
        "rpc_exec_update_user_info", {"user_id": "pi-1", "data_qnt": 100}, token=credential
    )
    await cloud.op("rpc_exec_update_user_info", {"user_id": "pi-2", "data_qnt": 1}, token=other)
    offers = (
        await cloud.op("rpc_exec_client_requesting_task", {"user_id": "pi-1"}, token=credential)
    ).json()
    not_mine = await cloud.op(
        "rpc_exec_client_requesting_task", {"user_id": "pi-2"}, token=credential
    )
    as_operator = await cloud.op("rpc_exec_create_task", TASK, token=credential)
    download = await cloud.http.get("/download/t3/client.py", headers=device)
    other_download = await cloud.http.get(
        "/download/t3/client.py", headers={"Authorization": f"Bearer {other}"}
    )
    anonymous_download = await cloud.http.get("/download/t3/client.py")
    basic = await cloud.http.get("/download/t3/client.py", auth=("u", "p"))

    assert info.status_code == 200
    assert [o["ID"] for o in offers] == ["t3"]
    assert "password" not in offers[0]
    sha = {f["name"]: f["sha256"] for f in offers[0]["files"]}
    assert sha["client.py"] == hashlib.sha256(CLIENT_PY.encode()).hexdigest()
    assert not_mine.status_code == 403
    assert as_operator.status_code == 403
    assert download.status_code == 200
    assert download.content == CLIENT_PY.encode()
    assert other_download.status_code == 403
    assert anonymous_download.status_code == 401
    assert basic.status_code == 401  # legacy devices are off
    await cloud.op("rpc_exec_stop_server_task", {"task_id": "t3"})


async def test_download_grant_ends_when_the_task_stops_or_stops_matching(cloud: Cloud) -> None:
    """A device's later files of a bundle skip the offer check for a few seconds; a
    stop, a change of criteria or of the device's record ends that at once."""
    await create_bundle_task(
        cloud, "t4", server_arguments=["1", "--hold"], selection_criteria="data_qnt > 50"
    )
    await cloud.op("rpc_exec_start_server_task", {"task_id": "t4"})
    credential = await enroll(cloud, "pi-4")
    device = {"Authorization": f"Bearer {credential}"}
    await cloud.op(
        "rpc_exec_update_user_info", {"user_id": "pi-4", "data_qnt": 100}, token=credential
    )

    async def status_soon(expected: int) -> int:
        for _ in range(100):
            status = (await cloud.http.get("/download/t4/client.py", headers=device)).status_code
            if status == expected:
                break
            await asyncio.sleep(0.01)
        return status

    assert await status_soon(200) == 200
    await cloud.op(
        "rpc_exec_update_task", {"task_id": "t4", "selection_criteria": "data_qnt > 500"}
    )
    assert await status_soon(403) == 403
    await cloud.op("rpc_exec_update_task", {"task_id": "t4", "selection_criteria": "data_qnt > 5"})
    assert await status_soon(200) == 200
    await cloud.op(
        "rpc_exec_update_user_info", {"user_id": "pi-4", "data_qnt": 1}, token=credential
    )
    assert await status_soon(403) == 403
    await cloud.op(
        "rpc_exec_update_user_info", {"user_id": "pi-4", "data_qnt": 100}, token=credential
    )
    assert await status_soon(200) == 200
    await cloud.op("rpc_exec_stop_server_task", {"task_id": "t4"})
    assert await status_soon(403) == 403


async def test_a_device_change_is_seen_by_its_next_task_request(cloud: Cloud) -> None:
    """Task requests reuse a device's attributes; updating them ends that at once."""
    await create_bundle_task(
        cloud, "t5", server_arguments=["1", "--hold"], selection_criteria="data_qnt > 50"
    )
    await cloud.op("rpc_exec_start_server_task", {"task_id": "t5"})
    credential = await enroll(cloud, "pi-5")

    async def offers_after(data_qnt: int) -> list[str]:
        body = {"user_id": "pi-5", "data_qnt": data_qnt}
        await cloud.op("rpc_exec_update_user_info", body, token=credential)
        response = await cloud.op(
            "rpc_exec_client_requesting_task", {"user_id": "pi-5"}, token=credential
        )
        return [offer["ID"] for offer in response.json()]

    seen = [await offers_after(q) for q in (100, 1, 100, 1, 60)]
    await cloud.op("rpc_exec_stop_server_task", {"task_id": "t5"})

    assert seen == [["t5"], [], ["t5"], [], ["t5"]]


async def test_enrollment_token_is_single_use(cloud: Cloud) -> None:
    enrollment = (await cloud.op("rpc_exec_create_enrollment_token", {})).json()
    body = {"user_id": "pi-9", "enrollment_token": enrollment["enrollment_token"]}

    first = await cloud.http.post("/api/devices/enroll", json=body)
    second = await cloud.http.post("/api/devices/enroll", json=body)

    assert first.status_code == 200
    assert second.status_code == 401


async def test_a_revoked_device_is_refused_at_once_and_may_enroll_again(cloud: Cloud) -> None:
    credential = await enroll(cloud, "pi-10")
    device = {"Authorization": f"Bearer {credential}"}
    body = {"user_id": "pi-10", "data_qnt": 5}
    before = await cloud.op("rpc_exec_update_user_info", body, token=credential)
    token = (await cloud.op("rpc_exec_create_enrollment_token", {"uses": 2})).json()
    enroll_body = {"user_id": "pi-10", "enrollment_token": token["enrollment_token"]}

    taken = await cloud.http.post("/api/devices/enroll", json=enroll_body)
    by_device = await cloud.op("rpc_exec_revoke_device", {"user_id": "pi-10"}, token=credential)
    revoked = await cloud.op("rpc_exec_revoke_device", {"user_id": "pi-10"})
    unknown = await cloud.op("rpc_exec_revoke_device", {"user_id": "nobody"})

    async def refused() -> bool:
        for _ in range(100):
            status = (
                await cloud.op("rpc_exec_update_user_info", body, token=credential)
            ).status_code
            if status == 401:
                return True
            await asyncio.sleep(0.01)
        return False

    after = await refused()
    stream = await cloud.http.get("/api/devices/pi-10/stream", headers=device)
    again = await cloud.http.post("/api/devices/enroll", json=enroll_body)
    record = (await cloud.op("rpc_exec_get_user_info", {"user_id": "pi-10"})).json()

    assert before.status_code == 200
    assert taken.status_code == 409 and "already enrolled" in taken.text
    assert by_device.status_code == 403
    assert revoked.status_code == 200 and revoked.json() == {"user_id": "pi-10", "revoked": True}
    assert unknown.status_code == 404
    assert after, "the revoked credential was still accepted after 1 s"
    assert stream.status_code == 401
    assert again.status_code == 200 and again.json()["credential"] != credential
    assert record["data_qnt"] == 5  # the record stays


async def test_health_metrics_and_openapi(cloud: Cloud) -> None:
    health = await cloud.http.get("/healthz")
    await cloud.op("rpc_exec_list_tasks", {})
    metrics = await cloud.http.get("/metrics")
    openapi = await cloud.http.get("/openapi.json")

    assert health.json()["status"] == "ok"
    assert "agata_tasks_running" in metrics.text
    assert 'path="/rpc_exec_list_tasks",status="200"' in metrics.text
    paths = openapi.json()["paths"]
    assert "/rpc_exec_create_task" in paths
    assert "/rpc_exec_resolve_credential" not in paths  # internal plumbing
    schema = paths["/rpc_exec_create_task"]["post"]["requestBody"]["content"]["application/json"]
    assert "schema" in schema


async def test_validate_criteria_reports_unknown_names_and_matches(cloud: Cloud) -> None:
    await cloud.op("rpc_exec_update_user_info", {"user_id": "d1", "data_qnt": 10})
    await cloud.op("rpc_exec_update_user_info", {"user_id": "d2", "data_qnt": 100})

    good = (
        await cloud.op("rpc_exec_validate_criteria", {"selection_criteria": "data_qnt > 50"})
    ).json()
    typo = (
        await cloud.op("rpc_exec_validate_criteria", {"selection_criteria": "dat_qnt > 5"})
    ).json()
    bad = (await cloud.op("rpc_exec_validate_criteria", {"selection_criteria": "open('x')"})).json()
    await cloud.op("rpc_exec_update_user_info", {"user_id": "d2", "extra": {"site": "lab"}})
    mistyped = (
        await cloud.op(
            "rpc_exec_validate_criteria",
            {"selection_criteria": 'data_qnt > "abc" or site == 3 or site == "lab"'},
        )
    ).json()

    assert good == {
        "valid": True,
        "error": "",
        "unknown_names": [],
        "type_mismatches": [],
        "matching": 1,
        "matching_online": 1,
        "devices": 2,
    }
    assert typo["unknown_names"] == ["dat_qnt"]
    assert bad["valid"] is False and "call" in bad["error"]
    assert len(mistyped["type_mismatches"]) == 2
    assert "data_qnt is a number" in mistyped["type_mismatches"][0]
    assert "site is a string" in mistyped["type_mismatches"][1]
    assert mistyped["matching"] == 1


async def test_device_reports_show_who_runs_a_task(cloud: Cloud) -> None:
    fields = {k: v for k, v in TASK.items() if k != "task_id"}
    await create_bundle_task(cloud, "4fe5", **{**fields, "server_arguments": ["1", "--hold"]})
    assert (await cloud.op("rpc_exec_start_server_task", {"task_id": "4fe5"})).status_code == 200
    device_info = {"user_id": "pi-5", "data_qnt": 99, "sensors": ["camera"]}
    await cloud.op("rpc_exec_update_user_info", device_info)
    report = {"user_id": "pi-5", "task_id": "4fe5"}

    await cloud.op("rpc_exec_report_device_task", {**report, "status": "running"})
    running = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "4fe5"})).json()
    await cloud.op("rpc_exec_report_device_task", {**report, "status": "stopped", "reason": "r"})
    stopped = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "4fe5"})).json()
    device = (await cloud.op("rpc_exec_get_user_info", {"user_id": "pi-5"})).json()

    assert running["devices_running"] == ["pi-5"]
    assert stopped["devices_running"] == []
    assert device["tasks"][0]["status"] == "stopped"
