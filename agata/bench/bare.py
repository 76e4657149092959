"""The bare limits ``agata bench`` compares its figures with, measured in the same run.

Each limit does the least the measured figure could do on this machine, with the same
settings, so ``figure / limit`` says how much of the machine AGATA leaves on the table
whatever the machine:

- :func:`asyncio_round_trips`: a request/reply loop on one event loop: the client puts
  ``(request, future)`` on an :class:`asyncio.Queue`, one server task takes it and sets
  the future (the memory bus's limit);
- :func:`aio_pika_round_trips`: aio-pika request/reply through the same broker, a
  client and a service each on its own connection, an exclusive reply queue and a
  correlation id per call (the amqp bus's limit);
- :func:`bare_fastapi`: a FastAPI endpoint that takes the same JSON body (validated by
  a pydantic model, as any FastAPI endpoint would) and answers fixed bytes, served by
  uvicorn with httptools on the caller's event loop and the gateway's uvicorn settings,
  loaded by the same ``wrk`` command (the task requests' limit);
- :func:`interpreter_start_ms`: spawning this Python until its first line runs (the
  dispatch and failover limit: a task's client cannot run before its interpreter has
  started).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from agata.bench.report import percentile

__all__ = [
    "aio_pika_round_trips",
    "asyncio_round_trips",
    "bare_fastapi",
    "interpreter_start_ms",
]


async def asyncio_round_trips(
    calls: int, in_flight: int, min_seconds: float = 0.0
) -> dict[str, float]:
    """Sequential and ``in_flight``-concurrent request/reply through an asyncio queue."""
    loop = asyncio.get_running_loop()
    requests: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[Any]]] = asyncio.Queue()

    async def server() -> None:
        while True:
            request, future = await requests.get()
            if not future.done():
                future.set_result(request["n"])

    async def call(n: int) -> Any:
        future: asyncio.Future[Any] = loop.create_future()
        requests.put_nowait(({"n": n}, future))
        return await future

    serving = asyncio.create_task(server())
    try:
        return await round_trips(call, calls, in_flight, min_seconds)
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


async def aio_pika_round_trips(
    url: str, calls: int, in_flight: int, min_seconds: float = 0.0
) -> dict[str, float]:
    """The same through RabbitMQ with aio-pika alone (no AGATA code on the path)."""
    import aio_pika

    queue_name = f"bench_bare_{uuid.uuid4().hex}"
    server_connection = await aio_pika.connect(url)
    client_connection = await aio_pika.connect(url)
    try:
        server_channel = await server_connection.channel(publisher_confirms=False)
        await server_channel.set_qos(prefetch_count=max(64, in_flight * 2))
        queue = await server_channel.declare_queue(queue_name, auto_delete=True)

        async def on_request(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if message.reply_to:
                await server_channel.default_exchange.publish(
                    aio_pika.Message(
                        message.body,
                        content_type="application/json",
                        correlation_id=message.correlation_id,
                    ),
                    routing_key=message.reply_to,
                )
            await message.ack()

        await queue.consume(on_request)
        channel = await client_connection.channel(publisher_confirms=False)
        replies = await channel.declare_queue("", exclusive=True, auto_delete=True)
        pending: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            future = pending.pop(message.correlation_id or "", None)
            if future is not None and not future.done():
                future.set_result(message.body)

        await replies.consume(on_reply, no_ack=True)
        loop = asyncio.get_running_loop()

        async def call(n: int) -> Any:
            correlation_id = str(uuid.uuid4())
            future: asyncio.Future[bytes] = loop.create_future()
            pending[correlation_id] = future
            await channel.default_exchange.publish(
                aio_pika.Message(
                    b'{"n":%d}' % n,
                    content_type="application/json",
                    reply_to=replies.name,
                    correlation_id=correlation_id,
                    type=queue_name,
                ),
                routing_key=queue_name,
            )
            return await asyncio.wait_for(future, 10)

        return await round_trips(call, calls, in_flight, min_seconds)
    finally:
        await client_connection.close()
        await server_connection.close()


async def round_trips(
    call: Any, calls: int, in_flight: int, min_seconds: float = 0.0
) -> dict[str, float]:
    """Warm up, then time sequential calls and calls ``in_flight`` at once: each at
    least ``calls`` of them and for at least ``min_seconds`` (so a fast limit and a
    slower figure are measured over rounds of similar length, and a pause of the
    process weighs on both alike)."""
    for i in range(min(200, calls)):
        await call(i)
    latencies = []
    started = time.perf_counter()
    deadline = started + min_seconds
    count = 0
    while count < calls or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        await call(count)
        latencies.append(time.perf_counter() - t0)
        count += 1
    sequential = count / (time.perf_counter() - started)
    done = 0

    async def worker() -> None:
        nonlocal done
        while done < calls or time.perf_counter() < deadline:
            done += 1
            await call(done)

    started = time.perf_counter()
    deadline = started + min_seconds
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    concurrent = done / (time.perf_counter() - started)
    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "sequential_rps": sequential,
        "concurrent_rps": concurrent,
    }


@contextlib.asynccontextmanager
async def bare_fastapi(path: str, reply: bytes) -> AsyncIterator[str]:
    """Serve ``POST path`` answering ``reply`` on a loopback port; yields the base URL.

    The body is validated as ``{"user_id": str}`` (a pydantic model, like the gateway's
    operation routes); uvicorn runs on the current event loop with httptools and the
    gateway's own settings (keep-alive 5 s, no access log, no websockets).
    """
    import uvicorn
    from fastapi import FastAPI, Response
    from pydantic import BaseModel

    class Body(BaseModel):
        user_id: str

    app = FastAPI()

    async def answer(body: Body) -> Response:
        return Response(reply, media_type="application/json")

    # The annotations as classes (this module postpones them; Body is local).
    answer.__annotations__ = {"body": Body, "return": Response}
    app.post(path)(answer)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=5,
        http="httptools",
        ws="none",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if serving.done():
                await serving
                raise RuntimeError("the bare FastAPI server did not start")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serving
        sock.close()


def interpreter_start_ms(samples: int = 9, code: str = "") -> list[float]:
    """Milliseconds from spawning ``sys.executable`` until its first line runs, per
    sample (``code`` runs first when given, e.g. ``"import agata.runtime"``)."""
    values = []
    for _ in range(samples):
        t0 = time.time()
        out = subprocess.run(
            [sys.executable, "-c", f"{code}\nimport time; print(time.time())"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        values.append((float(out.stdout) - t0) * 1000)
    return values
