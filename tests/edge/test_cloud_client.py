"""The HTTP client of the agent against a real local server: errors, garbage, retries."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from helpers import free_port

from agata.edge.cloud_client import CloudClient
from agata.edge.device_info import DeviceInfo
from agata.edge.push import parse_sse
from agata.errors import AgataError, ErrorCode
from agata.retry import Backoff
from edge.fileserver import FileServer, file_server

REQUEST = "/rpc_exec_client_requesting_task"
JSON = "application/json"


@pytest.fixture
def server() -> Iterator[FileServer]:
    with file_server() as running:
        yield running


@pytest.fixture
async def client(server: FileServer) -> AsyncIterator[CloudClient]:
    async with CloudClient(
        server.url, credential="c", attempts=3, backoff=Backoff(0.01, 0.02)
    ) as cloud:
        yield cloud


async def test_offers_are_parsed_and_an_unusable_one_is_skipped(
    server: FileServer, client: CloudClient
) -> None:
    offers = [{"ID": "good", "version": 3, "client_argv": ["-x"]}, {"ID": "../bad"}, "junk"]
    server.routes[REQUEST] = (200, json.dumps(offers).encode(), JSON)

    result = await client.requesting_task("dev1")

    assert [(o.task_id, o.version, o.argv) for o in result] == [("good", "3", ["-x"])]
    assert json.loads(server.requests[0].body) == {"user_id": "dev1"}
    assert server.requests[0].headers["Authorization"] == "Bearer c"


@pytest.mark.parametrize("body", [b"<html>oops</html>", b'{"not": "a list"}'])
async def test_garbage_from_the_cloud_is_an_internal_error(
    server: FileServer, client: CloudClient, body: bytes
) -> None:
    server.routes[REQUEST] = (200, body, JSON)

    with pytest.raises(AgataError, match="garbage") as caught:
        await client.requesting_task("dev1")

    assert caught.value.code is ErrorCode.INTERNAL


async def test_an_http_error_keeps_its_status_and_detail_and_is_not_retried(
    server: FileServer, client: CloudClient
) -> None:
    server.routes[REQUEST] = (403, b'{"detail": "a device may only act for itself"}', JSON)

    with pytest.raises(AgataError, match="only act for itself") as caught:
        await client.requesting_task("dev1")

    assert caught.value.code is ErrorCode.FORBIDDEN
    assert len(server.requests) == 1


async def test_5xx_is_retried_then_raised_and_logged_once(
    server: FileServer, client: CloudClient, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/rpc_exec_update_user_info"] = (503, b'{"detail": "busy"}', JSON)

    with caplog.at_level(logging.INFO, logger="agata.edge.cloud_client"):
        with pytest.raises(AgataError) as caught:
            await client.update_user_info(DeviceInfo("dev1"))
        server.routes["/rpc_exec_update_user_info"] = (200, b"null", JSON)
        await client.update_user_info(DeviceInfo("dev1"))

    assert caught.value.code is ErrorCode.UNAVAILABLE
    assert len(server.requests) == 4
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1
    assert sum("reachable" in m and "unreachable" not in m for m in messages) == 1


async def test_an_unreachable_cloud_is_unavailable() -> None:
    async with CloudClient(
        f"http://127.0.0.1:{free_port()}", attempts=2, backoff=Backoff(0.01, 0.02)
    ) as client:
        with pytest.raises(AgataError) as caught:
            await client.requesting_task("dev1")

    assert caught.value.code is ErrorCode.UNAVAILABLE


async def test_enroll_returns_the_credential(server: FileServer, client: CloudClient) -> None:
    server.routes["/api/devices/enroll"] = (200, b'{"user_id": "d", "credential": "s3"}', JSON)

    assert await client.enroll("d", "enroll-token") == "s3"


async def test_server_sent_events_are_parsed() -> None:
    lines = [
        ": connected",
        "",
        "event: task",
        'data: {"task_id": "t1",',
        'data: "running": true}',
        "",
        ": keepalive",
        "data: plain",
        "",
        "event: ignored-without-data",
        "",
    ]

    async def source() -> AsyncIterator[str]:
        for line in lines:
            yield line

    events = [event async for event in parse_sse(source())]

    assert events == [("task", '{"task_id": "t1",\n"running": true}'), ("message", "plain")]


def test_retry_after_reads_seconds_and_dates_of_a_busy_answer() -> None:
    import email.utils

    from agata.edge.cloud_client import MAX_RETRY_AFTER, retry_after

    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert retry_after(httpx.Response(503, headers={"Retry-After": "3"})) == 3.0
    assert retry_after(httpx.Response(429, headers={"Retry-After": " 7 "})) == 7.0
    assert 25.0 <= (retry_after(httpx.Response(503, headers={"Retry-After": later})) or 0) <= 31.0
    assert retry_after(httpx.Response(503, headers={"Retry-After": "99999"})) == MAX_RETRY_AFTER
    assert retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None
    assert retry_after(httpx.Response(503)) is None
    assert retry_after(httpx.Response(500, headers={"Retry-After": "3"})) is None
