"""Device scope over real HTTP (issue 14, item 7): a device reports only on the tasks it
is offered in their current run, may not take a name the cloud records under, and its
event stream carries only its own tasks; an unknown task and another's answer alike."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cloud_harness import Cloud, create_bundle_task

from cloud.test_gateway import enroll

MATCH = "data_qnt > 50"


async def start_held_task(cloud: Cloud, task_id: str, criteria: str = "") -> None:
    """A task whose server side runs (holding) until it is stopped."""
    await create_bundle_task(
        cloud, task_id, selection_criteria=criteria, server_arguments=["1", "--hold"]
    )
    started = await cloud.op("rpc_exec_start_server_task", {"task_id": task_id})
    assert started.status_code == 200, started.text


async def device(cloud: Cloud, user_id: str, data_qnt: float) -> str:
    """Enroll and register a device; its credential."""
    credential = await enroll(cloud, user_id)
    body = {"user_id": user_id, "data_qnt": data_qnt}
    registered = await cloud.op("rpc_exec_update_user_info", body, token=credential)
    assert registered.status_code == 200, registered.text
    return credential


async def report(cloud: Cloud, credential: str, user_id: str, **fields: Any) -> httpx.Response:
    body = {"user_id": user_id, "status": "running", **fields}
    return await cloud.op("rpc_exec_report_device_task", body, token=credential)


async def task_view(cloud: Cloud, task_id: str) -> dict[str, Any]:
    response = await cloud.op("rpc_exec_get_task_by_id", {"task_id": task_id})
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def test_reports_on_tasks_not_offered_answer_like_unknown_tasks(cloud: Cloud) -> None:
    await start_held_task(cloud, "t-match", MATCH)
    await create_bundle_task(cloud, "t-idle")  # matches everyone, not running
    near = await device(cloud, "pi-near", 100)
    far = await device(cloud, "pi-far", 1)
    metric = {"round": 7, "metrics": {"acc": 0.99}}

    not_matching = await report(cloud, far, "pi-far", task_id="t-match", **metric)
    not_running = await report(cloud, near, "pi-near", task_id="t-idle", **metric)
    unknown = await report(cloud, near, "pi-near", task_id="t-nope", **metric)
    offered = await report(cloud, near, "pi-near", task_id="t-match", round=1, metrics={"a": 1})

    # Before: 200 for the first two, the metric stored and pi-far "running" t-match.
    answers = [(r.status_code, r.json()["detail"]) for r in (not_matching, not_running)]
    assert unknown.status_code == 404
    assert answers == [
        (404, unknown.json()["detail"].replace("t-nope", "t-match")),
        (404, unknown.json()["detail"].replace("t-nope", "t-idle")),
    ]
    assert offered.status_code == 200, offered.text
    view = await task_view(cloud, "t-match")
    assert view["devices_running"] == ["pi-near"]
    metrics = (await cloud.op("rpc_exec_get_task_metrics", {"task_id": "t-match"})).json()
    assert [(m["round"], m["source"]) for m in metrics if m["source"] != "server"] == [
        (1, "pi-near")
    ]
    idle_metrics = (await cloud.op("rpc_exec_get_task_metrics", {"task_id": "t-idle"})).json()
    assert idle_metrics == []
    assert (await task_view(cloud, "t-idle"))["devices_running"] == []


async def test_a_device_that_ran_a_task_reports_how_its_part_ended(cloud: Cloud) -> None:
    await start_held_task(cloud, "t-run", MATCH)
    near = await device(cloud, "pi-ran", 100)
    late = await device(cloud, "pi-late", 100)  # matches, but never took part
    assert (await report(cloud, near, "pi-ran", task_id="t-run")).status_code == 200
    stopped = await cloud.op("rpc_exec_stop_server_task", {"task_id": "t-run"})
    assert stopped.status_code == 200

    ended = await report(cloud, near, "pi-ran", task_id="t-run", status="stopped")
    again = await report(cloud, near, "pi-ran", task_id="t-run", status="running")
    stranger = await report(cloud, late, "pi-late", task_id="t-run", status="finished")

    assert ended.status_code == 200, ended.text
    assert again.status_code == 404  # the run is over: nothing more to report
    assert stranger.status_code == 404
    devices = (await cloud.op("rpc_exec_get_task_devices", {"task_id": "t-run"})).json()
    assert [(s["user_id"], s["status"]) for s in devices["states"]] == [("pi-ran", "stopped")]


@pytest.mark.parametrize("user_id", ["server", "SERVER", "Server", "cloud", "operator"])
async def test_reserved_ids_are_refused_at_enrollment_and_registration(
    cloud: Cloud, user_id: str
) -> None:
    enrollment = (await cloud.op("rpc_exec_create_enrollment_token", {})).json()
    body = {"user_id": user_id, "enrollment_token": enrollment["enrollment_token"]}

    enrolled = await cloud.http.post("/api/devices/enroll", json=body)
    registered = await cloud.op("rpc_exec_update_user_info", {"user_id": user_id})

    assert enrolled.status_code == 400 and "reserved" in enrolled.json()["detail"]
    assert registered.status_code == 400 and "reserved" in registered.json()["detail"]
    devices = (await cloud.op("rpc_exec_list_devices", {})).json()
    assert devices == []


async def test_a_device_cannot_pass_its_metrics_for_the_servers(cloud: Cloud) -> None:
    """Before: a device enrolled as ``server``; its round 99 then was the task's last."""
    await start_held_task(cloud, "t-srv")
    await cloud.op("rpc_exec_update_user_info", {"user_id": "server"})  # refused now
    reported = await cloud.op(
        "rpc_exec_report_device_task",
        {"user_id": "server", "task_id": "t-srv", "status": "running", "round": 99,
         "metrics": {"acc": 1.0}},
    )  # fmt: skip

    assert reported.status_code == 400
    assert (await task_view(cloud, "t-srv"))["last_round"] != 99


@contextlib.asynccontextmanager
async def task_events(
    cloud: Cloud, user_id: str, credential: str
) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    """The ``task`` events (their data) of a device's stream, as they arrive."""
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    connected = asyncio.Event()
    headers = {"Authorization": f"Bearer {credential}"}
    async with httpx.AsyncClient(base_url=cloud.node.url, timeout=30) as http:
        async with http.stream("GET", f"/api/devices/{user_id}/stream", headers=headers) as r:
            assert r.status_code == 200

            async def read() -> None:
                name = ""
                async for line in r.aiter_lines():
                    if line.startswith(": connected"):
                        connected.set()
                    elif line.startswith("event: "):
                        name = line[len("event: ") :]
                    elif line.startswith("data: ") and name == "task":
                        events.put_nowait(json.loads(line[len("data: ") :]))

            reader = asyncio.create_task(read())
            await asyncio.wait_for(connected.wait(), 5)
            try:
                yield events
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await reader


async def drain(events: asyncio.Queue[dict[str, Any]], last: str) -> list[str]:
    """Task ids of the events up to the first one about ``last`` (within 10 s)."""
    seen: list[str] = []
    while True:
        data = await asyncio.wait_for(events.get(), 10)
        seen.append(data.get("task_id", ""))
        if data.get("task_id") == last:
            return seen


async def test_a_devices_stream_carries_only_its_own_tasks(cloud: Cloud) -> None:
    near = await device(cloud, "pi-n", 100)
    far = await device(cloud, "pi-f", 1)
    async with (
        task_events(cloud, "pi-n", near) as near_events,
        task_events(cloud, "pi-f", far) as far_events,
    ):
        await start_held_task(cloud, "secret-1", MATCH)  # pi-n only
        await cloud.op("rpc_exec_stop_server_task", {"task_id": "secret-1"})
        await create_bundle_task(cloud, "secret-2")  # nobody's: not running
        await start_held_task(cloud, "everyone")  # a marker both streams get

        near_seen = await drain(near_events, "everyone")
        far_seen = await drain(far_events, "everyone")

    # Before: every stream carried every task's id and state.
    assert far_seen == ["everyone"]
    assert near_seen == ["secret-1", "secret-1", "everyone"]  # started, then stopped


async def test_a_device_that_stops_matching_is_out_of_scope_at_once(cloud: Cloud) -> None:
    """The registry trusts a checked (device, task) pair for a while; a change of the
    device's record ends that trust at once."""
    await start_held_task(cloud, "t-attr", MATCH)
    credential = await device(cloud, "pi-moved", 100)
    assert (await report(cloud, credential, "pi-moved", task_id="t-attr")).status_code == 200
    body = {"user_id": "pi-moved", "data_qnt": 1}
    assert (await cloud.op("rpc_exec_update_user_info", body, token=credential)).status_code == 200

    running = await report(cloud, credential, "pi-moved", task_id="t-attr", round=2)
    ended = await report(cloud, credential, "pi-moved", task_id="t-attr", status="stopped")

    assert running.status_code == 404
    assert ended.status_code == 200, ended.text


async def test_a_devices_stream_carries_its_offers_as_its_poll_answers_them(
    cloud: Cloud,
) -> None:
    """Issue 17 (dispatch): a task event on a device's own stream carries the offers
    its poll would get at that moment, so the agent need not poll again; those of
    another device's tasks never appear in them."""
    near = await device(cloud, "pi-o", 100)
    await start_held_task(cloud, "far-only", "data_qnt < 50")
    async with task_events(cloud, "pi-o", near) as events:
        await start_held_task(cloud, "near-1", MATCH)
        started = await asyncio.wait_for(events.get(), 10)
        poll = await cloud.op("rpc_exec_client_requesting_task", {"user_id": "pi-o"}, token=near)
        await cloud.op("rpc_exec_stop_server_task", {"task_id": "near-1"})
        stopped = await asyncio.wait_for(events.get(), 10)

    assert started["task_id"] == "near-1" and started["running"] is True
    assert started["offers"] == poll.json()
    assert [offer["ID"] for offer in started["offers"]] == ["near-1"]
    assert stopped["task_id"] == "near-1" and stopped["offers"] == []


async def test_an_operators_view_of_a_device_stream_carries_no_offers(cloud: Cloud) -> None:
    await device(cloud, "pi-v", 100)
    async with task_events(cloud, "pi-v", cloud.token) as events:
        await start_held_task(cloud, "seen-1", MATCH)
        started = await asyncio.wait_for(events.get(), 10)

    assert started["task_id"] == "seen-1" and "offers" not in started
