"""The gateway's TCP connections: Nagle off, so keep-alive responses are not delayed."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from agata.cloud.cloud_node import CloudNode
from agata.settings import load_settings


async def test_accepted_connections_have_nodelay(tmp_path: Path) -> None:
    settings = load_settings(
        flags={"data_dir": tmp_path / "cloud", "gateway_port": 0, "gateway_host": "127.0.0.1"},
        environ={},
    )
    node = CloudNode(settings)
    await node.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        assert node._server is not None
        connections = list(node._server.server_state.connections)
        assert connections, "the request's connection is not tracked"
        for protocol in connections:
            sock = protocol.transport.get_extra_info("socket")  # type: ignore[attr-defined]
            # Without TCP_NODELAY every response after the first on a connection waited
            # ~40 ms for the client's delayed ACK.
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        writer.close()
        await writer.wait_closed()
    finally:
        await node.stop()
