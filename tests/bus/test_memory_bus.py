"""memory:// specifics beyond the shared contract: its worker tasks."""

from __future__ import annotations

import asyncio

from agata.bus.bus import Delivery
from agata.bus.memory_bus import MemoryBus


async def test_workers_are_reused_bounded_by_prefetch_and_end_with_their_consumer() -> None:
    bus = MemoryBus()
    await bus.connect()
    baseline = len(asyncio.all_tasks())

    async def answer(delivery: Delivery) -> bytes:
        await asyncio.sleep(0.01 if delivery.body == b"slow" else 0)
        return b'{"status_code":200,"return":1}'

    consumer = await bus.consume("q", answer, prefetch=4)
    for _ in range(50):
        await bus.request("q", b"{}", timeout=1)
    after_sequential = len(asyncio.all_tasks()) - baseline
    await asyncio.gather(*(bus.request("q", b"slow", timeout=2) for _ in range(20)))
    after_concurrent = len(asyncio.all_tasks()) - baseline
    await consumer.cancel()
    after_cancel = len(asyncio.all_tasks()) - baseline
    await bus.close()

    assert after_sequential == 1  # one parked worker served all fifty
    assert after_concurrent == 4  # never more than prefetch
    assert after_cancel == 0


async def test_a_worker_cancelled_while_parked_is_not_handed_a_message() -> None:
    bus = MemoryBus()
    await bus.connect()

    async def answer(_delivery: Delivery) -> bytes:
        return b'{"status_code":200,"return":1}'

    await bus.consume("q", answer, prefetch=4)
    await bus.request("q", b"{}", timeout=1)
    parked = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in parked:  # e.g. a loop that cancels what is left
        task.cancel()
    await asyncio.gather(*parked, return_exceptions=True)

    after = await bus.request("q", b"{}", timeout=1)
    await bus.close()

    assert len(parked) == 1
    assert after == b'{"status_code":200,"return":1}'
