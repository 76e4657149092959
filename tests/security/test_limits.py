"""Size and rate limits of the gateway, and clients that are slow on purpose.

All over HTTP against a real gateway on a loopback port: the cloud of the harness (its
uvicorn settings are the ones of ``agata cloud run``), or the same gateway app served
once more with other limits (a rate limit, short timeouts) on the same bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cloud_harness import Cloud, create_bundle_task, running_cloud

from agata.cloud.gateway import GatewayConfig, create_gateway, limits
from agata.cloud.gateway.limits import TokenBucket, guarded_http_protocol

MIB = 1024 * 1024


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path, max_upload_bytes=256 * 1024) as running:
        yield running


@asynccontextmanager
async def serve(app: Any, **config: Any) -> AsyncIterator[int]:
    """Serve ``app`` on a free loopback port (no lifespan: the cloud runs the first one)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", ws="none", **config)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A body of ``total`` bytes sent chunked (no Content-Length)."""
    for start in range(0, total, size):
        yield b" " * min(size, total - start)


async def achunks(total: int) -> AsyncIterator[bytes]:
    for chunk in chunks(total):
        yield chunk


# -- request size ------------------------------------------------------------------


async def test_an_operation_body_over_1_mib_is_413_with_or_without_content_length(
    cloud: Cloud,
) -> None:
    headers = {**cloud.auth, "Content-Type": "application/json"}

    declared = await cloud.http.post(
        "/rpc_exec_list_tasks", content=b" " * (MIB + 1), headers=headers
    )
    chunked = await cloud.http.post(
        "/rpc_exec_list_tasks", content=achunks(2 * MIB), headers=headers
    )
    just_under = await cloud.http.post(
        "/rpc_exec_list_tasks", content=b" " * (MIB - 2) + b"{}", headers=headers
    )

    assert declared.status_code == 413
    assert "1048576" in declared.json()["detail"]
    assert chunked.status_code == 413
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in chunked.request.headers
    assert just_under.status_code == 200


async def test_an_upload_over_max_upload_bytes_is_413_and_writes_nothing(cloud: Cloud) -> None:
    await create_bundle_task(cloud, "t1")
    before = (await cloud.http.get("/api/tasks/t1/files", headers=cloud.auth)).json()
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    async def multipart() -> AsyncIterator[bytes]:
        yield head
        async for chunk in achunks(2 * MIB):
            yield chunk
        yield tail

    declared = await cloud.http.post(
        "/api/tasks/t1/files", files=[("files", ("big.bin", b"x" * MIB))], headers=cloud.auth
    )
    chunked = await cloud.http.post(
        "/api/tasks/t1/files",
        content=multipart(),
        headers={**cloud.auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    after = (await cloud.http.get("/api/tasks/t1/files", headers=cloud.auth)).json()

    assert declared.status_code == 413
    assert chunked.status_code == 413
    assert after == before
    assert not (cloud.node.bundles.root / "task_t1" / "big.bin").exists()


async def test_a_stalled_body_is_408(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "BODY_IDLE_SECONDS", 0.5)
    port = cloud.node.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /rpc_exec_list_tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {cloud.token}\r\nContent-Length: 100\r\n\r\n".encode()
        + b'{"running":'
    )
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.read(300), 5)
    waited = time.monotonic() - started
    writer.close()

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"stalled" in answer
    assert waited < 2


# -- request rate ------------------------------------------------------------------


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3.0, clock=lambda: now[0])

    first = [bucket.take("a") for _ in range(4)]
    other = bucket.take("b")
    now[0] += 0.5  # one token back
    later = [bucket.take("a"), bucket.take("a")]
    now[0] += 100.0  # refills to the burst, not beyond
    refilled = [bucket.take("a") for _ in range(4)]

    assert first[:3] == [0.0, 0.0, 0.0]
    assert first[3] == pytest.approx(0.5)
    assert other == 0.0  # one bucket per key
    assert later[0] == 0.0
    assert later[1] == pytest.approx(0.5)
    assert refilled[:3] == [0.0, 0.0, 0.0]
    assert refilled[3] > 0


def test_token_bucket_forgets_idle_clients() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=1.0, burst=2.0, max_keys=100, clock=lambda: now[0])

    for n in range(100):
        bucket.take(f"10.0.0.{n}")
    now[0] += 10.0
    bucket.take("10.0.1.1")
    bucket.take("10.0.1.2")

    assert len(bucket._buckets) <= 2


async def test_rate_limit_answers_429_with_retry_after_per_client_address(cloud: Cloud) -> None:
    # One token a second: the six requests below must come within a second for the
    # sixth to be refused (a loaded CI machine took over 200 ms at 5 per second).
    config = GatewayConfig(cloud.node.bundles, cloud.node.artifacts, rate_limit=1.0, rate_burst=5.0)
    app = create_gateway(cloud.node.bus, config)
    async with serve(app) as port:
        url = f"http://127.0.0.1:{port}/rpc_exec_list_tasks"
        # another address of the loopback network: another client
        other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(headers=cloud.auth) as http:
            burst = [(await http.post(url, json={})).status_code for _ in range(5)]
            limited = await http.post(url, json={})
            async with httpx.AsyncClient(headers=cloud.auth, transport=other) as second:
                elsewhere = await second.post(url, json={})
            await asyncio.sleep(1.05)  # 1 per second: a token is back
            again = await http.post(url, json={})

    assert burst == [200] * 5
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert "too many requests" in limited.json()["detail"]
    assert elsewhere.status_code == 200
    assert again.status_code == 200


async def test_no_rate_limit_by_default(cloud: Cloud) -> None:
    statuses = await asyncio.gather(*(cloud.op("rpc_exec_list_tasks", {}) for _ in range(300)))

    assert {response.status_code for response in statuses} == {200}


# -- slow clients --------------------------------------------------------------------


async def slow_loris(port: int, stop: asyncio.Event, delay: float = 0.1) -> bytes:
    """Send a request head one byte at a time until the server answers or closes (or
    ``stop``); return the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(reader.read(200))
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100_000
    with contextlib.suppress(ConnectionError):
        for byte in head:
            if stop.is_set() or answer.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(delay)
    try:
        return await asyncio.wait_for(answer, 0.5)
    except (TimeoutError, ConnectionError):
        return b""
    finally:
        writer.close()


async def test_slow_and_idle_connections_do_not_block_others(cloud: Cloud) -> None:
    port = cloud.node.port
    assert port is not None
    stop = asyncio.Event()
    lorises = [asyncio.create_task(slow_loris(port, stop)) for _ in range(50)]
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
    await asyncio.sleep(1.0)  # every slow client has sent a few bytes

    timings = []
    async with httpx.AsyncClient(base_url=cloud.node.url, headers=cloud.auth) as fresh:
        for _ in range(20):
            started = time.perf_counter()
            response = await fresh.post(
                "/rpc_exec_list_tasks", json={}, headers={"Connection": "close"}
            )
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200
    stop.set()
    await asyncio.gather(*lorises)
    for _reader, writer in idle:
        writer.close()

    assert max(timings) < 0.5, timings


async def test_a_head_must_arrive_in_time_even_byte_by_byte(cloud: Cloud) -> None:
    protocol = guarded_http_protocol(head_timeout=1.0)
    async with serve(cloud.node.app, http=protocol) as port:
        started = time.monotonic()
        never = asyncio.Event()
        trickled = await slow_loris(port, never, delay=0.05)  # keeps sending
        trickle_time = time.monotonic() - started
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        silent = await asyncio.wait_for(reader.read(100), 5)  # sends nothing
        silent_time = time.monotonic() - started
        writer.close()

    assert trickled.startswith(b"HTTP/1.1 408 ")
    assert 0.9 < trickle_time < 3
    assert silent == b""  # closed without a word
    assert 0.9 < silent_time < 3


async def test_a_huge_request_head_is_431(cloud: Cloud) -> None:
    port = cloud.node.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(reader.read(200))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    with contextlib.suppress(ConnectionError):
        for _ in range(64):  # 4 MiB of headers, never ending
            if answer.done():
                break
            writer.write(b"X-Pad: " + b"a" * 65536 + b"\r\n")
            await writer.drain()
    head = await asyncio.wait_for(answer, 5)
    writer.close()
    after = await httpx.AsyncClient().get(f"{cloud.node.url}/healthz")

    assert head.startswith(b"HTTP/1.1 431 ")
    assert after.status_code == 200


async def test_a_flood_of_idle_connections_does_not_make_the_gateway_refuse(
    cloud: Cloud,
) -> None:
    protocol = guarded_http_protocol()  # the default: 10 s for a head
    async with serve(cloud.node.app, http=protocol, limit_concurrency=100) as port:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(300)]
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient() as http:
            statuses = [
                (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code for _ in range(10)
            ]
        closed = 0
        for reader, writer in idle:
            with contextlib.suppress(TimeoutError, ConnectionError):
                if await asyncio.wait_for(reader.read(1), 0.01) == b"":
                    closed += 1
            writer.close()

    assert statuses == [200] * 10  # not 503: the oldest idle connections made room
    assert closed >= 200
