"""Downloads are streamed from disk, a bounded number at once per downloader (issue 14,
item 3): a downloader that does not read its responses holds one chunk per download in
the cloud, not the file, and past ``max_downloads`` it is answered 429.

The cloud runs in this process: its memory is this process's resident set.
"""

from __future__ import annotations

import asyncio
import io
import socket
import zipfile
from pathlib import Path

from cloud_harness import Cloud, create_bundle_task, running_cloud

MIB = 1024 * 1024
FILE_BYTES = 24 * MIB


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def stalled_download(cloud: Cloud, path: str) -> tuple[asyncio.StreamWriter, bytes]:
    """Ask for ``path`` and read only its status line: the rest waits in the server."""
    assert cloud.node.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", cloud.node.port, limit=1024)
    writer.transport.set_write_buffer_limits(0)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth_line(cloud)}\r\n".encode())
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.transport.pause_reading()  # read nothing more
    return writer, status


def auth_line(cloud: Cloud) -> str:
    return f"Authorization: Bearer {cloud.token}\r\n"


async def upload_big_file(cloud: Cloud) -> bytes:
    await create_bundle_task(cloud, "t1")
    content = bytes(range(256)) * (FILE_BYTES // 256)
    response = await cloud.http.post(
        "/api/tasks/t1/files", files=[("files", ("big.bin", content))], headers=cloud.auth
    )
    assert response.status_code == 200, response.text
    return content


async def test_stalled_downloads_hold_a_chunk_each_not_the_file(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, max_upload_bytes=32 * MIB, max_downloads=6) as cloud:
        await upload_big_file(cloud)
        before = rss_bytes()

        stalled = [await stalled_download(cloud, "/download/t1/big.bin") for _ in range(6)]
        await asyncio.sleep(0.5)
        grown = rss_bytes() - before
        health = await cloud.http.get("/healthz")
        for writer, _ in stalled:
            writer.close()

    assert {status for _, status in stalled} == {b"HTTP/1.1 200 OK\r\n"}
    # Whole files would be 6 x 24 MiB = 144 MiB; chunks and socket buffers a few MiB.
    assert grown < 24 * MIB, f"the cloud grew by {grown / MIB:.0f} MiB"
    assert health.status_code == 200


async def test_past_max_downloads_a_downloader_gets_429_until_one_ends(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, max_upload_bytes=32 * MIB, max_downloads=2) as cloud:
        content = await upload_big_file(cloud)
        stalled = [await stalled_download(cloud, "/download/t1/big.bin") for _ in range(2)]

        third = await cloud.http.get("/download/t1/big.bin", headers=cloud.auth)
        zipped = await cloud.http.get("/api/tasks/t1/bundle.zip", headers=cloud.auth)
        for writer, _ in stalled:
            writer.close()
        for _ in range(50):  # the server notices the clients left
            after = await cloud.http.get("/download/t1/big.bin", headers=cloud.auth)
            if after.status_code != 429:
                break
            await asyncio.sleep(0.1)
        archive = await cloud.http.get("/api/tasks/t1/bundle.zip", headers=cloud.auth)

    assert third.status_code == 429
    assert third.headers["retry-after"] == "1"
    assert zipped.status_code == 429  # the same operator token
    assert after.status_code == 200
    assert after.content == content
    assert after.headers["content-length"] == str(FILE_BYTES)
    assert archive.status_code == 200
    members = zipfile.ZipFile(io.BytesIO(archive.content))
    assert members.read("big.bin") == content
