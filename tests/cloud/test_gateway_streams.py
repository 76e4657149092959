"""The event streams over real HTTP: every client gets every event under its own name,
and a device's stream ends when its credential is revoked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from cloud_harness import Cloud, create_bundle_task

from cloud.test_gateway import enroll


@contextlib.asynccontextmanager
async def stream(cloud: Cloud, path: str, token: str) -> AsyncIterator[asyncio.Queue[str]]:
    """Open ``path`` as an event stream; yield a queue of its event names ("" when the
    server ended the stream)."""
    names: asyncio.Queue[str] = asyncio.Queue()
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=cloud.node.url, timeout=30) as http:
        async with http.stream("GET", path, headers=headers) as response:
            assert response.status_code == 200

            async def read() -> None:
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        names.put_nowait(line[len("event: ") :])
                names.put_nowait("")

            reader = asyncio.create_task(read())
            try:
                yield names
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await reader


async def next_name(names: asyncio.Queue[str], wanted: str) -> str:
    """The next event name that is ``wanted`` or the stream's end, within 5 s."""
    while True:
        name = await asyncio.wait_for(names.get(), 5)
        if name in (wanted, ""):
            return name


async def start_held_task(cloud: Cloud, task_id: str, **fields: object) -> None:
    """Create a task for ``fields`` and start it; its server side holds for 120 s."""
    await create_bundle_task(cloud, task_id, server_arguments=["1", "--hold"], **fields)
    started = await cloud.op("rpc_exec_start_server_task", {"task_id": task_id})
    assert started.status_code == 200, started.text


async def test_every_client_gets_the_event_under_its_own_name(cloud: Cloud) -> None:
    credential = await enroll(cloud, "pi-20")
    async with (
        stream(cloud, "/api/stream", cloud.token) as first,
        stream(cloud, "/api/stream", cloud.token) as second,
        stream(cloud, "/api/devices/pi-20/stream", credential) as device,
    ):
        await start_held_task(cloud, "t1")  # a task a device hears of: offered to it

        # Before, the first reader took the name off the shared message: the others got
        # "message", which the web console (listening for "task") never saw.
        got = [await next_name(queue, "task") for queue in (first, second, device)]

    assert got == ["task", "task", "task"]


async def test_a_devices_stream_ends_when_its_credential_is_revoked(cloud: Cloud) -> None:
    revoked_credential = await enroll(cloud, "pi-21")
    kept_credential = await enroll(cloud, "pi-22")
    async with (
        stream(cloud, "/api/devices/pi-21/stream", revoked_credential) as revoked,
        stream(cloud, "/api/devices/pi-22/stream", kept_credential) as kept,
    ):
        response = await cloud.op("rpc_exec_revoke_device", {"user_id": "pi-21"})
        assert response.status_code == 200

        ended = await asyncio.wait_for(revoked.get(), 5)
        await start_held_task(cloud, "t2")
        still = await next_name(kept, "task")

    assert ended == ""  # the server closed it
    assert still == "task"  # another device's stream carries on
