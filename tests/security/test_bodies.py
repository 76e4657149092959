"""What a stranger can hold with request bodies (issue 14, items 1 and 2).

Raw sockets against a real cloud on a loopback port (its uvicorn settings are the ones
of ``agata cloud run``), with the body limits shrunk through the settings so that each
test takes seconds: a body that trickles in is cut by its total time, not only by an
idle timer; a client address may keep only a few bodies unfinished; a request without
a valid token is refused from its headers before any body byte is read or spooled; a
client that leaves half way through an upload leaves no spooled file behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path

import pytest
from cloud_harness import Cloud, create_bundle_task, running_cloud

from agata.cloud.gateway.limits import guarded_http_protocol

from .test_limits import serve

MIB = 1024 * 1024
ENROLL_HEAD = (
    b"POST /api/devices/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100000\r\n\r\n{"
)

PART_HEAD = (
    b'--b0\r\nContent-Disposition: form-data; name="files"; filename="big.bin"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)


async def connect(cloud: Cloud) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert cloud.node.port is not None
    return await asyncio.open_connection("127.0.0.1", cloud.node.port)


async def trickle(writer: asyncio.StreamWriter, seconds: float) -> None:
    """One body byte every 0.2 s (each resets an idle timer) for ``seconds``."""
    deadline = time.monotonic() + seconds
    with contextlib.suppress(ConnectionError):
        while time.monotonic() < deadline and not writer.is_closing():
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.2)


async def answer(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the server sent until it closed the connection, or within ``timeout``."""
    got = b""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(TimeoutError, ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(2000), deadline - time.monotonic()):
            got += chunk
    return got


async def health(cloud: Cloud) -> bytes:
    reader, writer = await connect(cloud)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return status


# -- item 1: slow bodies -----------------------------------------------------------


async def test_a_trickling_body_is_cut_by_its_total_time(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, body_timeout=1.0) as cloud:
        reader, writer = await connect(cloud)
        writer.write(ENROLL_HEAD)
        started = time.monotonic()
        feeding = asyncio.create_task(trickle(writer, 8))

        got = await answer(reader, 6)
        waited = time.monotonic() - started
        feeding.cancel()
        writer.close()

    assert got.startswith(b"HTTP/1.1 408 "), got
    assert b"request body too slow" in got
    assert waited < 4  # 1 s, and the 1 s a refused connection lingers


async def test_slow_bodies_cannot_take_every_connection(tmp_path: Path) -> None:
    # max_connections=16 (its least): 15 anonymous trickling enrollments used to make
    # /healthz answer 503 to everyone for as long as they trickled.
    async with running_cloud(
        tmp_path, max_connections=16, body_timeout=1.0, max_slow_bodies=16
    ) as cloud:
        held = [await connect(cloud) for _ in range(15)]
        for _, writer in held:
            writer.write(ENROLL_HEAD)
        feeding = [asyncio.create_task(trickle(writer, 8)) for _, writer in held]
        try:
            answers = await asyncio.gather(*(answer(reader, 6) for reader, _ in held))
            # (a refused connection lingers 1 s before the server closes it)
            for _ in range(15):
                after = await health(cloud)
                if after == b"HTTP/1.1 200 OK\r\n":
                    break
                await asyncio.sleep(0.2)
        finally:
            for task in feeding:
                task.cancel()
            for _, writer in held:
                writer.close()

    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers
    assert after == b"HTTP/1.1 200 OK\r\n"


async def test_one_address_may_keep_only_max_slow_bodies_unfinished(tmp_path: Path) -> None:
    # The cloud's gateway served once more with a guard that counts a body as slow
    # after 0.3 s instead of 10 s.
    protocol = guarded_http_protocol(slow_after=0.3, max_slow_bodies=3)
    async with running_cloud(tmp_path) as cloud, serve(cloud.node.app, http=protocol) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        feeding = []
        for _, writer in held:
            writer.write(ENROLL_HEAD)
            feeding.append(asyncio.create_task(trickle(writer, 8)))
            await asyncio.sleep(0.05)  # the 4th is the newest
        try:
            fourth = await answer(held[3][0], 5)
            first_three = [await answer(reader, 0.2) for reader, _ in held[:3]]
        finally:
            for task in feeding:
                task.cancel()
            for _, writer in held:
                writer.close()
        ok = await health(cloud)  # a request without a body: not limited

    assert fourth.startswith(b"HTTP/1.1 429 "), fourth
    assert b"retry-after: 1" in fourth.lower()
    assert first_three == [b"", b"", b""]  # still open, not answered
    assert ok == b"HTTP/1.1 200 OK\r\n"


async def test_near_the_connection_limit_the_oldest_unfinished_body_makes_room(
    tmp_path: Path,
) -> None:
    # 15 bodies trickling at the minimum rate's pace would stay for body_timeout (60 s):
    # the 16th connection (of max_connections 16) closes the oldest instead of a 503.
    async with running_cloud(
        tmp_path, max_connections=16, body_timeout=60.0, max_slow_bodies=16
    ) as cloud:
        held = [await connect(cloud) for _ in range(15)]
        for _, writer in held:
            writer.write(ENROLL_HEAD)
        feeding = [asyncio.create_task(trickle(writer, 8)) for _, writer in held]
        try:
            await asyncio.sleep(1.2)  # past EVICTABLE_BODY_SECONDS
            status = await health(cloud)
            oldest = await answer(held[0][0], 2)
            others = [await answer(reader, 0.05) for reader, _ in held[1:]]
        finally:
            for task in feeding:
                task.cancel()
            for _, writer in held:
                writer.close()

    assert status == b"HTTP/1.1 200 OK\r\n"
    assert oldest.startswith(b"HTTP/1.1 503 "), oldest
    assert others == [b""] * 14


async def test_a_body_sent_at_once_is_served_as_before(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, body_timeout=1.0, max_slow_bodies=1) as cloud:
        responses = await asyncio.gather(*(cloud.op("rpc_exec_list_tasks", {}) for _ in range(20)))
    assert {r.status_code for r in responses} == {200}


# -- item 2: authentication before the body ------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type", "size"),
    [
        ("/api/tasks/t1/files", "multipart/form-data; boundary=b0", 50 * MIB),
        ("/rpc_exec_list_tasks", "application/json", MIB - 1),
    ],
)
async def test_an_anonymous_body_is_refused_from_its_headers(
    tmp_path: Path, path: str, content_type: str, size: int
) -> None:
    async with running_cloud(tmp_path, max_upload_bytes=60 * MIB) as cloud:
        await create_bundle_task(cloud, "t1")
        reader, writer = await connect(cloud)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {size}\r\n\r\n".encode()
            + PART_HEAD
            + b"x" * 1024  # of the body, only this is ever sent
        )
        got = await answer(reader, 3)
        writer.close()

    assert got.startswith(b"HTTP/1.1 401 "), got
    assert b"www-authenticate: bearer" in got.lower()


async def test_a_device_calling_an_operator_route_is_refused_before_its_body(
    tmp_path: Path,
) -> None:
    from .harness import enroll

    async with running_cloud(tmp_path) as cloud:
        credential = await enroll(cloud, "dev-1")
        reader, writer = await connect(cloud)
        writer.write(
            b"POST /rpc_exec_list_tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {credential}\r\nContent-Length: 500000\r\n\r\n{{".encode()
        )
        got = await answer(reader, 3)
        writer.close()

    assert got.startswith(b"HTTP/1.1 403 "), got


def spooled_files(folder: Path) -> list[str]:
    """This process's open files in ``folder`` (spooled uploads have no name there)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(folder)):
                found.append(target)
    return found


async def test_an_upload_left_half_way_leaves_no_spooled_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    async with running_cloud(tmp_path / "cloud", max_upload_bytes=20 * MIB) as cloud:
        await create_bundle_task(cloud, "t1")
        _reader, writer = await connect(cloud)
        writer.write(
            b"POST /api/tasks/t1/files HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {cloud.token}\r\n".encode()
            + f"Content-Type: multipart/form-data; boundary=b0\r\nContent-Length: {10 * MIB}"
            "\r\n\r\n".encode()
            + PART_HEAD
        )
        for _ in range(4):  # 4 MiB: past the 1 MiB kept in memory, spooled to disk
            writer.write(b"x" * MIB)
            await writer.drain()
        for _ in range(100):
            if spooled_files(spool):
                break
            await asyncio.sleep(0.02)
        while_uploading = spooled_files(spool)
        writer.close()  # the client leaves half way
        for _ in range(100):
            if not spooled_files(spool):
                break
            await asyncio.sleep(0.02)
        after = spooled_files(spool)
        listing = (await cloud.http.get("/api/tasks/t1/files", headers=cloud.auth)).json()

    assert while_uploading  # the measurement sees spooled files
    assert after == []
    assert "big.bin" not in {f["name"] for f in listing}


async def test_a_malformed_upload_is_400_and_leaves_no_spooled_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # python-multipart's own errors (here a control character in a part's header)
    # were a 500 once the route read its body itself, and its spooled files stayed open.
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    body = (
        PART_HEAD
        + b"x" * (2 * MIB)  # spooled to disk
        + b'\r\n--b0\r\nContent-Disposition: form-data; name="files"; filename="b"\r\n'
        + b"Bad\x04Header: x\r\n\r\nabc\r\n--b0--\r\n"
    )
    async with running_cloud(tmp_path / "cloud", max_upload_bytes=20 * MIB) as cloud:
        await create_bundle_task(cloud, "t1")
        response = await cloud.http.post(
            "/api/tasks/t1/files",
            content=body,
            headers={**cloud.auth, "Content-Type": "multipart/form-data; boundary=b0"},
        )
        left = spooled_files(spool)

    assert response.status_code == 400, response.text
    assert "malformed multipart body" in response.json()["detail"]
    assert left == []


async def test_a_refusal_from_the_headers_is_counted_by_its_route(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        refused = await cloud.http.post("/rpc_exec_list_tasks", json={})
        metrics = (await cloud.http.get("/metrics")).text

    assert refused.status_code == 401
    assert 'path="/rpc_exec_list_tasks",status="401"' in metrics
