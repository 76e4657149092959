"""The bus contract, run against every implementation (memory:// and a real RabbitMQ)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import BaseModel, Field

from agata.bus import Bus, Delivery, RpcClient, Service, create_bus
from agata.bus.bus import EVENTS_QUEUE
from agata.errors import AgataError, ErrorCode

BusFactory = Callable[[], Bus]


@pytest.fixture(params=["memory", "amqp"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    """Yield a factory of connected buses sharing one broker (or one process for memory)."""
    made: list[Bus] = []
    if request.param == "memory":
        shared = create_bus("memory://")
        await shared.connect()
        made.append(shared)

        def factory() -> Bus:
            return shared  # memory:// has no broker: "processes" share one bus

    else:
        url = request.getfixturevalue("amqp_url")

        def factory() -> Bus:
            bus = create_bus(url)
            made.append(bus)
            return bus

    yield factory
    for bus in made:
        await bus.close()


@pytest.fixture
def queue_suffix(request: pytest.FixtureRequest) -> str:
    """Queues on a real broker outlive a test: give each test its own names."""
    name = request.node.name
    return (
        "_" + re.sub(r"[^A-Za-z0-9_]", "_", name)[:60] + hashlib.sha1(name.encode()).hexdigest()[:6]
    )


class Echo(BaseModel):
    text: str = Field(max_length=1000)
    delay: float = 0.0


async def start_service(bus: Bus, suffix: str, name: str = "echo") -> Service:
    await bus.connect()
    service = Service(bus, name)

    async def echo(req: Echo) -> dict[str, Any]:
        if req.delay:
            await asyncio.sleep(req.delay)
        return {"text": req.text, "by": id(service)}

    async def fail(req: Echo) -> None:
        raise RuntimeError(f"boom {req.text}")

    async def refuse(req: Echo) -> None:
        raise AgataError(ErrorCode.NOT_FOUND, f"no such thing: {req.text}")

    service.add_operation("op_echo" + suffix, Echo, echo)
    service.add_operation("op_fail" + suffix, Echo, fail)
    service.add_operation("op_refuse" + suffix, Echo, refuse)
    await service.start()
    return service


async def client_for(make_bus: BusFactory) -> RpcClient:
    bus = make_bus()
    await bus.connect()
    return RpcClient(bus, timeout=5)


async def test_round_trip(make_bus: BusFactory, queue_suffix: str) -> None:
    await start_service(make_bus(), queue_suffix)
    client = await client_for(make_bus)

    result = await client.call("op_echo" + queue_suffix, {"text": "hé"})

    assert result["text"] == "hé"


async def test_invalid_request_is_400_with_reason(make_bus: BusFactory, queue_suffix: str) -> None:
    await start_service(make_bus(), queue_suffix)
    client = await client_for(make_bus)

    with pytest.raises(AgataError) as caught:
        await client.call("op_echo" + queue_suffix, {"text": 5})

    assert caught.value.status_code == 400
    assert "text" in caught.value.message


async def test_handler_exception_is_500_and_service_survives(
    make_bus: BusFactory, queue_suffix: str
) -> None:
    await start_service(make_bus(), queue_suffix)
    client = await client_for(make_bus)

    with pytest.raises(AgataError) as caught:
        await client.call("op_fail" + queue_suffix, {"text": "x"})
    after = await client.call("op_echo" + queue_suffix, {"text": "still here"})

    assert caught.value.status_code == 500
    assert "boom x" in caught.value.message
    assert after["text"] == "still here"


async def test_agata_error_keeps_its_code(make_bus: BusFactory, queue_suffix: str) -> None:
    await start_service(make_bus(), queue_suffix)
    client = await client_for(make_bus)

    with pytest.raises(AgataError) as caught:
        await client.call("op_refuse" + queue_suffix, {"text": "t1"})

    assert caught.value.code is ErrorCode.NOT_FOUND
    assert caught.value.message == "no such thing: t1"


async def test_hidden_internal_errors(make_bus: BusFactory, queue_suffix: str) -> None:
    service = await start_service(make_bus(), queue_suffix)
    service.hide_internal_errors = True
    client = await client_for(make_bus)

    with pytest.raises(AgataError) as caught:
        await client.call("op_fail" + queue_suffix, {"text": "secret"})

    assert caught.value.status_code == 500
    assert "secret" not in caught.value.message


async def test_unknown_type_is_invalid_rpc_function(
    make_bus: BusFactory, queue_suffix: str
) -> None:
    """A message whose `type` names no operation of the service (the original's dispatch)."""
    bus = make_bus()
    await start_service(bus, queue_suffix)
    body = await service_reply(
        make_bus, "op_echo" + queue_suffix, b'{"text": "x"}', type_="rpc_exec_nothing"
    )

    assert body == {"status_code": 500, "exception": "rpc_exec_nothing is an invalid RPC function"}


async def service_reply(
    make_bus: BusFactory, queue: str, body: bytes, *, type_: str | None
) -> dict[str, Any]:
    """Publish a raw request with explicit properties, as a foreign client would."""
    bus = make_bus()
    await bus.connect()
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    reply_queue = f"raw_reply_{queue}"

    async def on_reply(delivery: Delivery) -> None:
        await replies.put(delivery.body)
        return None

    consumer = await bus.consume(reply_queue, on_reply)
    try:
        await publish_raw(bus, Delivery(queue, body, reply_queue, "corr-1", type_))
        return dict(json.loads(await asyncio.wait_for(replies.get(), 5)))
    finally:
        await consumer.cancel()


async def publish_raw(bus: Bus, delivery: Delivery) -> None:
    if hasattr(bus, "publish_raw"):
        await bus.publish_raw(delivery)
        return
    import aio_pika

    connection = await aio_pika.connect(bus.url)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(
                delivery.body,
                reply_to=delivery.reply_to,
                correlation_id=delivery.correlation_id,
                type=delivery.type,
            ),
            routing_key=delivery.queue,
        )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe", "not JSON"),
    ],
)
async def test_bad_bodies_get_400(
    make_bus: BusFactory, queue_suffix: str, body: bytes, reason: str
) -> None:
    await start_service(make_bus(), queue_suffix)
    queue = "op_echo" + queue_suffix

    reply = await service_reply(make_bus, queue, body, type_=queue)
    after = await (await client_for(make_bus)).call(queue, {"text": "ok"})

    assert reply["status_code"] == 400
    assert reason in reply["exception"]
    assert after["text"] == "ok"


async def test_missing_reply_to_is_dropped_and_consumer_survives(
    make_bus: BusFactory, queue_suffix: str
) -> None:
    bus = make_bus()
    await start_service(bus, queue_suffix)
    queue = "op_echo" + queue_suffix

    await publish_raw(bus, Delivery(queue, b'{"text": "x"}', None, "c", queue))
    after = await (await client_for(make_bus)).call(queue, {"text": "ok"})

    assert after["text"] == "ok"


async def test_oversized_request_is_refused(make_bus: BusFactory, queue_suffix: str) -> None:
    await start_service(make_bus(), queue_suffix)
    client = await client_for(make_bus)

    with pytest.raises(AgataError) as caught:
        await client.call("op_echo" + queue_suffix, {"text": "x" * (2 * 1024 * 1024)})

    assert caught.value.code is ErrorCode.TOO_LARGE


async def test_hundred_calls_in_flight(make_bus: BusFactory, queue_suffix: str) -> None:
    await start_service(make_bus(), queue_suffix)
    client = await client_for(make_bus)

    results = await asyncio.gather(
        *(
            client.call("op_echo" + queue_suffix, {"text": str(i), "delay": 0.05})
            for i in range(100)
        )
    )

    assert [r["text"] for r in results] == [str(i) for i in range(100)]


async def test_two_replicas_share_the_queue(make_bus: BusFactory, queue_suffix: str) -> None:
    first = await start_service(make_bus(), queue_suffix)
    second = await start_service(make_bus(), queue_suffix)
    client = await client_for(make_bus)

    results = await asyncio.gather(
        *(client.call("op_echo" + queue_suffix, {"text": str(i), "delay": 0.02}) for i in range(40))
    )

    served_by = {r["by"] for r in results}
    assert served_by == {id(first), id(second)}


async def test_timeout_when_nobody_answers(make_bus: BusFactory, queue_suffix: str) -> None:
    service = await start_service(make_bus(), queue_suffix)
    await service.stop()  # the queue exists, its consumer is gone
    client = await client_for(make_bus)

    with pytest.raises(AgataError) as caught:
        await client.call("op_echo" + queue_suffix, {"text": "x"}, timeout=0.3)

    assert caught.value.code is ErrorCode.TIMEOUT


async def test_unknown_queue_fails_fast(make_bus: BusFactory, queue_suffix: str) -> None:
    client = await client_for(make_bus)
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(AgataError) as caught:
        await client.call("op_nobody_serves" + queue_suffix, {}, timeout=3)

    assert caught.value.code is ErrorCode.UNAVAILABLE
    assert loop.time() - started < 2


async def test_consumer_disconnecting_mid_call_hands_message_over(
    make_bus: BusFactory, queue_suffix: str
) -> None:
    slow = await start_service(make_bus(), queue_suffix)
    client = await client_for(make_bus)
    call = asyncio.create_task(client.call("op_echo" + queue_suffix, {"text": "x", "delay": 0.5}))
    await asyncio.sleep(0.2)  # the slow replica holds the message now
    backup = await start_service(make_bus(), queue_suffix)

    await slow.stop()  # disconnects before answering
    result = await call

    assert result["by"] == id(backup)


async def test_events_reach_the_events_queue(make_bus: BusFactory, queue_suffix: str) -> None:
    bus = make_bus()
    await bus.connect()
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_event(delivery: Delivery) -> None:
        event = json.loads(delivery.body)
        if event.get("tag") == queue_suffix:
            await received.put(event)

    consumer = await bus.consume(EVENTS_QUEUE, on_event)
    client = await client_for(make_bus)
    client.service = "tester"
    await client.publish_event("test_fn", "something happened", tag=queue_suffix)
    event = await asyncio.wait_for(received.get(), 5)
    await consumer.cancel()

    assert event["service"] == "tester"
    assert event["function"] == "test_fn"
    assert event["event"] == "something happened"
    assert isinstance(event["time"], float)


async def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(AgataError) as caught:
        create_bus("kafka://x")

    assert "kafka" in caught.value.message
    assert "memory://" in caught.value.message


async def test_two_memory_buses_are_independent() -> None:
    first, second = create_bus("memory://"), create_bus("memory://")
    await first.connect()
    await second.connect()
    await start_service(first, "_independent")

    with pytest.raises(AgataError) as caught:
        await RpcClient(second, timeout=0.5).call("op_echo_independent", {"text": "x"})

    assert caught.value.code is ErrorCode.UNAVAILABLE


async def test_broadcast_reaches_every_subscriber(make_bus: BusFactory, queue_suffix: str) -> None:
    topic = "topic" + queue_suffix
    got: dict[int, asyncio.Queue[bytes]] = {1: asyncio.Queue(), 2: asyncio.Queue()}

    def collector(n: int) -> Any:
        async def on_message(delivery: Delivery) -> None:
            await got[n].put(delivery.body)

        return on_message

    first, second = make_bus(), make_bus()
    await first.connect()
    await second.connect()
    sub1 = await first.subscribe(topic, collector(1))
    sub2 = await second.subscribe(topic, collector(2))
    sender = make_bus()
    await sender.connect()

    await sender.broadcast(topic, b'{"n": 1}')

    assert await asyncio.wait_for(got[1].get(), 5) == b'{"n": 1}'
    assert await asyncio.wait_for(got[2].get(), 5) == b'{"n": 1}'
    await sub1.cancel()
    await sub2.cancel()


async def test_the_consumer_sees_the_callers_deadline(
    make_bus: BusFactory, queue_suffix: str
) -> None:
    bus = make_bus()
    await bus.connect()
    queue = "op_deadline" + queue_suffix
    seen: list[float | None] = []

    async def handler(delivery: Delivery) -> bytes:
        seen.append(delivery.deadline)
        return b'{"status_code": 200, "return": null}'

    await bus.consume(queue, handler)
    client = await client_for(make_bus)
    before = time.time()

    await client.call(queue, {}, timeout=3.0)

    assert seen and seen[0] is not None
    assert before + 2.0 <= seen[0] <= time.time() + 3.0


async def test_a_request_whose_caller_gave_up_is_not_served(
    make_bus: BusFactory, queue_suffix: str
) -> None:
    # Prepare: one request at a time; the first holds the place for a while
    bus = make_bus()
    await bus.connect()
    service = Service(bus, "slow", max_in_flight=1)
    served: list[str] = []

    async def echo(req: Echo) -> dict[str, Any]:
        served.append(req.text)
        await asyncio.sleep(req.delay)
        return {"text": req.text}

    queue = "op_slow" + queue_suffix
    service.add_operation(queue, Echo, echo)
    await service.start()
    client = await client_for(make_bus)
    # Execute: a second call waits behind it longer than its caller does
    first = asyncio.create_task(client.call(queue, {"text": "first", "delay": 1.0}, timeout=5))
    await asyncio.sleep(0.2)
    with pytest.raises(AgataError) as late:
        await client.call(queue, {"text": "late"}, timeout=0.3)
    assert (await first)["text"] == "first"
    after = await client.call(queue, {"text": "after"}, timeout=5)
    # Assert: the abandoned call never ran; the service went on serving
    assert late.value.code is ErrorCode.TIMEOUT
    assert after["text"] == "after"
    assert "late" not in served
