"""The AMQP bus survives the broker going away: a TCP proxy in front of the real
RabbitMQ cuts every connection and refuses new ones for a while, then lets them in."""

from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from pydantic import BaseModel

from agata.bus import RpcClient, Service, create_bus
from agata.errors import AgataError, ErrorCode


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        """The broker "goes away": no listener, every connection dropped."""
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    async def resume(self) -> None:
        await self.start()  # same port


class Ping(BaseModel):
    n: int


@pytest.mark.timeout(60)
async def test_services_and_clients_reconnect(amqp_url: str) -> None:
    parts = urlsplit(amqp_url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    via_proxy = urlunsplit(
        parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}")
    )
    server_bus = create_bus(via_proxy, reconnect_interval=0.5)
    client_bus = create_bus(via_proxy, reconnect_interval=0.5)
    await server_bus.connect()
    await client_bus.connect()
    service = Service(server_bus, "pinger")
    queue = f"op_ping_reconnect_{time.monotonic_ns()}"

    async def ping(req: Ping) -> int:
        return req.n

    service.add_operation(queue, Ping, ping)
    await service.start()
    client = RpcClient(client_bus, timeout=2)
    try:
        assert await client.call(queue, {"n": 1}) == 1

        await proxy.cut()
        await asyncio.sleep(0.3)
        with pytest.raises(AgataError) as during:
            await client.call(queue, {"n": 2})
        await asyncio.sleep(1.0)
        await proxy.resume()
        back_at = time.monotonic()
        result = None
        while time.monotonic() - back_at < 10:
            try:
                result = await client.call(queue, {"n": 3}, timeout=1)
                break
            except AgataError:
                await asyncio.sleep(0.2)
        reconnect_seconds = time.monotonic() - back_at
    finally:
        await service.stop()
        await server_bus.close()
        await client_bus.close()
        await proxy.cut()

    assert during.value.code in {ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT}
    assert "unavailable" in during.value.message or "no reply" in during.value.message
    assert result == 3, "no successful call within 10 s of the broker coming back"
    assert reconnect_seconds < 10
