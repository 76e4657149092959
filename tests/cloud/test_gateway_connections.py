"""How many connections the gateway holds (``max_connections``): every agent keeps an
event stream open, so a fleet past the old fixed 1,000 needs it to be a setting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from cloud_harness import cloud_settings

from agata.cloud.cloud_node import CloudNode

#: Streams a test opens at once.
BATCH = 100


@contextlib.asynccontextmanager
async def running_node(tmp_path: Path, max_connections: int) -> AsyncIterator[CloudNode]:
    # These tests are about the connection limit, not admission control: on a machine
    # short of CPU a burst of stream opens holds its places longer than the held target,
    # so admission shrinks its places to a sixteenth and sheds the rest of the burst with
    # 503 + Retry-After (as it should). The streams are an operator's (operators' places
    # are as many as the devices'): with max_in_flight = 16 x BATCH they never shrink
    # below one burst, and every 503 here is the connection limit's.
    settings = cloud_settings(tmp_path, max_connections=max_connections, max_in_flight=16 * BATCH)
    node = CloudNode(settings)  # type: ignore[arg-type]
    await node.start(first_token=True)
    try:
        yield node
    finally:
        await node.stop()


async def open_stream(port: int, token: str) -> tuple[asyncio.StreamWriter, bytes]:
    """Open the operator event stream on a raw connection; return it and the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /api/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    await writer.drain()
    return writer, await asyncio.wait_for(reader.readline(), 20)


async def get_health(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 20)
    writer.close()
    return status


async def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


async def test_more_open_streams_than_the_old_fixed_limit(tmp_path: Path) -> None:
    # (Within 10 % of the limit new connections close the oldest still waiting for a
    # request head, the guard against idle floods: these 1,100 are well below it.)
    async with running_node(tmp_path, max_connections=2_000) as node:
        assert node.port is not None and node.first_token
        writers: list[asyncio.StreamWriter] = []
        try:
            for _ in range(11):  # 1,100 streams, 100 at a time
                opened = await asyncio.gather(
                    *(open_stream(node.port, node.first_token) for _ in range(BATCH))
                )
                writers += [writer for writer, _ in opened]
                assert {status for _, status in opened} == {b"HTTP/1.1 200 OK\r\n"}

            assert await get_health(node.port) == b"HTTP/1.1 200 OK\r\n"
        finally:
            await close_all(writers)


async def test_past_max_connections_the_gateway_answers_503(tmp_path: Path) -> None:
    async with running_node(tmp_path, max_connections=16) as node:
        assert node.port is not None and node.first_token
        # 15 streams and the next connection make 16
        opened = [await open_stream(node.port, node.first_token) for _ in range(15)]
        try:
            assert {status for _, status in opened} == {b"HTTP/1.1 200 OK\r\n"}
            assert (await get_health(node.port)).startswith(b"HTTP/1.1 503")
        finally:
            await close_all([writer for writer, _ in opened])
        # the streams gone, it answers again
        await asyncio.sleep(0.2)
        assert await get_health(node.port) == b"HTTP/1.1 200 OK\r\n"
