"""Devices of the original system (``--legacy-devices``) with the documented arguments.

The original agent reads an offer like this: it splits ``client_arguments`` on spaces,
expands nothing, downloads every file of ``files_paths`` from ``/download/<ID>/<name>``
with the task's username/password (HTTP Basic) and runs ``python client.py <work>
<arguments...>``. :func:`original_agent` does exactly that against a real cloud, and the
client it runs is a real process that checks what it got.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from cloud_harness import SERVER_PY, Cloud, running_cloud

from agata.cloud.services.ratelog import RateLimitedWarning
from agata.edge.arguments import expand_client_arguments, placeholder_values
from agata.edge.cloud_client import TaskOffer
from agata.edge.device_info import DeviceInfo
from security.harness import enroll

#: The client side: no Flower, no AGATA; it checks that ``--address`` is HOST:PORT as
#: a Flower client needs it, prints the JSON lines the original's clients printed, and
#: fails (exit 2) otherwise.
CLIENT_PY = """
import argparse, json, re, sys
parser = argparse.ArgumentParser()
parser.add_argument("work")
parser.add_argument("--address", required=True)
parser.add_argument("--num-clients", type=int, required=True)
parser.add_argument("--name", default="")
parser.add_argument("--sensors", default="")
args = parser.parse_args()
if not re.fullmatch(r"[A-Za-z0-9.-]+:[0-9]{1,5}", args.address):
    print(json.dumps({"type": "error", "exception": "bad address " + repr(args.address)}))
    sys.exit(2)
print(json.dumps({"type": "print", "message": json.dumps(sys.argv[2:])}))
print(json.dumps({"type": "info", "info": "Finished"}))
"""

DOCUMENTED = "--address {host}:{port} --num-clients 1"
USERNAME, PASSWORD = "task-user", "task-password-1"


async def create_running_task(
    cloud: Cloud, task_id: str, client_arguments: str, **fields: Any
) -> None:
    body = {
        "task_id": task_id,
        "host": "127.0.0.1",
        "port": 8080,
        "username": USERNAME,
        "password": PASSWORD,
        "files_paths": [],
        "client_arguments": client_arguments,  # a string, as the original sent it
        "server_arguments": ["1", "--hold"],
        **fields,
    }
    response = await cloud.op("rpc_exec_create_task", body)
    assert response.status_code == 200, response.text
    files = [
        ("files", ("server.py", SERVER_PY.encode())),
        ("files", ("client.py", CLIENT_PY.encode())),
    ]
    response = await cloud.http.post(f"/api/tasks/{task_id}/files", files=files, headers=cloud.auth)
    assert response.status_code == 200, response.text
    response = await cloud.op("rpc_exec_start_server_task", {"task_id": task_id})
    assert response.status_code == 200, response.text


async def original_agent(cloud: Cloud, device: dict[str, Any], work: Path) -> list[str]:
    """One cycle of the original client task manager; the client's own arguments."""
    report = await cloud.op("rpc_exec_update_user_info", device, token=None)
    assert report.status_code == 200, report.text
    asked = await cloud.op(
        "rpc_exec_client_requesting_task", {"client_id": device["user_id"]}, token=None
    )
    assert asked.status_code == 200, asked.text
    offers = asked.json()
    assert len(offers) == 1, offers
    offer = offers[0]
    folder = work / f"task_{offer['ID']}"
    folder.mkdir(parents=True)
    for name in offer["files_paths"]:
        got = await cloud.http.get(
            f"/download/{offer['ID']}/{name}", auth=(offer["username"], offer["password"])
        )
        assert got.status_code == 200, got.text
        (folder / name).write_bytes(got.content)
    arguments = offer["client_arguments"].split(" ")  # no shell, no placeholders
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(folder / "client.py"),
        str(folder),
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, (out + err).decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert lines[-1] == {"type": "info", "info": "Finished"}
    argv: list[str] = json.loads(lines[0]["message"])
    return argv


async def test_an_original_agent_runs_the_client_with_the_documented_arguments(
    tmp_path: Path,
) -> None:
    device = {"user_id": "old-1", "data_qnt": 120, "sensors": ["gps", "camera"]}
    async with running_cloud(tmp_path, legacy_devices=True) as cloud:
        await create_running_task(
            cloud, "t1", DOCUMENTED + " --name {user_id}-{data_qnt} --sensors {sensors}"
        )
        argv = await original_agent(cloud, device, tmp_path / "device")
        offer = (
            await cloud.op("rpc_exec_client_requesting_task", {"user_id": "old-1"}, token=None)
        ).json()[0]

    assert argv == [
        "--address",
        "127.0.0.1:8080",
        "--num-clients",
        "1",
        "--name",
        "old-1-120",
        "--sensors",
        "camera,gps",
    ]
    # The same argv our agent makes for the same device from the same offer.
    ours = DeviceInfo("old-1", data_qnt=120, sensors=("gps", "camera"))
    task_offer = TaskOffer.model_validate(offer)
    assert expand_client_arguments(task_offer.argv, placeholder_values(ours, task_offer)) == argv
    assert offer["client_argv"][:2] == ["--address", "{host}:{port}"]  # ours expands it


async def test_enrolled_devices_get_the_arguments_unexpanded_and_no_password(
    tmp_path: Path,
) -> None:
    async with running_cloud(tmp_path, legacy_devices=True) as cloud:
        await create_running_task(cloud, "t1", DOCUMENTED)
        credential = await enroll(cloud, "new-1")
        await cloud.op("rpc_exec_update_user_info", {"user_id": "new-1"}, token=credential)
        asked = await cloud.op(
            "rpc_exec_client_requesting_task",
            {"user_id": "new-1", "legacy": False},
            token=credential,
        )
        # Asking for the original's form (the edge gateway does, for the agent behind it)
        as_original = await cloud.op(
            "rpc_exec_client_requesting_task",
            {"user_id": "new-1", "legacy": True},
            token=credential,
        )

    offer = asked.json()[0]
    assert offer["client_arguments"] == "--address '{host}:{port}' --num-clients 1"
    assert "password" not in offer and "username" not in offer
    original = as_original.json()[0]
    assert original["client_arguments"] == "--address 127.0.0.1:8080 --num-clients 1"
    assert original["password"].startswith("agata-dl:new-1:")  # made for it, not the task's


async def test_a_task_the_device_cannot_fill_in_is_not_offered_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agata.cloud.services.task_manager")
    async with running_cloud(tmp_path, legacy_devices=True) as cloud:
        await create_running_task(cloud, "t1", DOCUMENTED + " --index {client_index}")
        await cloud.op("rpc_exec_update_user_info", {"user_id": "old-1"}, token=None)
        polls = [
            await cloud.op("rpc_exec_client_requesting_task", {"user_id": "old-1"}, token=None)
            for _ in range(3)
        ]

    assert [p.status_code for p in polls] == [200, 200, 200]
    assert [p.json() for p in polls] == [[], [], []]
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "agata.cloud.services.task_manager"
    ]
    assert len(warnings) == 1, warnings
    assert "t1" in warnings[0] and "old-1" in warnings[0] and "{client_index}" in warnings[0]


async def test_the_original_create_page_sends_an_empty_tag(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        body = {"task_id": "t1", "host": "h", "port": 1, "tags": [""], "files_paths": []}
        created = await cloud.op("rpc_exec_create_task", body)
        empty = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "t1"})).json()
        updated = await cloud.op(
            "rpc_exec_update_task", {"task_id": "t1", "tags": ["", "mnist", "  "]}
        )
        tagged = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "t1"})).json()
        too_long = await cloud.op("rpc_exec_update_task", {"task_id": "t1", "tags": ["x" * 65]})

    assert created.status_code == 200, created.text
    assert empty["tags"] == []
    assert updated.status_code == 200, updated.text
    assert tagged["tags"] == ["mnist"]
    assert too_long.status_code == 400


async def test_without_the_switch_an_original_device_learns_why_and_the_log_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agata.cloud.gateway.auth")
    async with running_cloud(tmp_path) as cloud:
        await create_running_task(cloud, "t1", DOCUMENTED)
        calls = [
            await cloud.op("rpc_exec_update_user_info", {"user_id": "old-1"}, token=None),
            await cloud.op("rpc_exec_client_requesting_task", {"user_id": "old-1"}, token=None),
            await cloud.http.get("/api/devices/old-1/stream"),
            await cloud.http.get("/download/t1/client.py", auth=(USERNAME, PASSWORD)),
        ]

    assert [c.status_code for c in calls] == [401, 401, 401, 401]
    for call in calls:
        detail = call.json()["detail"]
        assert "devices of the original system: start the cloud with --legacy-devices" in detail
    warnings = [r.getMessage() for r in caplog.records if r.name == "agata.cloud.gateway.auth"]
    assert len(warnings) == 1, warnings  # four refusals, one line: rate-limited
    assert "/rpc_exec_update_user_info" in warnings[0] and "127.0.0.1" in warnings[0]
    assert "--legacy-devices" in warnings[0]


def test_a_rate_limited_warning_says_how_many_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    warning = RateLimitedWarning(logging.getLogger("test.ratelog"), 60.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="test.ratelog")

    written = [warning.warn("refused %s", n) for n in range(3)]
    now[0] += 59.0
    written.append(warning.warn("refused %s", 3))
    now[0] += 1.0
    written.append(warning.warn("refused %s", 4))

    assert written == [True, False, False, False, True]
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0",
        "refused 4 (and 3 more like it in the last 60 s)",
    ]
