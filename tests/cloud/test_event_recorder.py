"""The event recorder stores the ``events`` queue in batches and acknowledges a delivery
only once its event is stored (issue 15: one transaction per event was the first cost of
a report on PostgreSQL).

Before: each delivery was its own ``add_event`` transaction, and a delivery whose event
the store could not take (the database locked or down) was logged as refused and
acknowledged: the event was lost although the bus would have kept it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from agata.bus.bus import EVENTS_QUEUE
from agata.bus.envelope import encode
from agata.bus.memory_bus import MemoryBus
from agata.cloud.services.events import EventRecorder
from agata.cloud.services.notifier import Notifier
from agata.store import Store, create_store
from agata.store.async_store import AsyncStore


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def event_body(seq: int, **extra: Any) -> bytes:
    return encode(
        {"time": 1000.0 + seq, "service": "test", "function": "f", "event": f"e{seq}", **extra}
    )


def stored(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [row[0] for row in conn.execute("SELECT event FROM events ORDER BY time, id")]


class Recording:
    def __init__(self, bus: MemoryBus, store: Store, recorder: EventRecorder) -> None:
        self.bus = bus
        self.store = store
        self.recorder = recorder
        self.commits = 0

    async def publish(self, count: int, **extra: Any) -> None:
        for seq in range(count):
            await self.bus.publish(EVENTS_QUEUE, event_body(seq, **extra))


@pytest.fixture
async def recording(tmp_path: Path) -> AsyncIterator[Recording]:
    # A short busy timeout: a write the test's lock holds up fails fast as UNAVAILABLE.
    store = create_store(f"sqlite:///{tmp_path / 'events.db'}", busy_timeout=0.1)
    bus = MemoryBus()
    await bus.connect()
    async_store = AsyncStore(store)
    recorder = EventRecorder(bus, async_store, Notifier(bus))
    recording = Recording(bus, store, recorder)

    @event.listens_for(store.engine, "commit")
    def _on_commit(_conn: Any) -> None:
        recording.commits += 1

    await recorder.start()
    try:
        yield recording
    finally:
        await recorder.stop()
        await bus.close()
        await async_store.shutdown()
        store.close()


async def test_events_arriving_together_are_stored_in_few_transactions(
    recording: Recording, tmp_path: Path
) -> None:
    db = tmp_path / "events.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the writes wait: the deliveries pile up meanwhile
    await recording.publish(200)
    await asyncio.sleep(0.3)
    holder.execute("ROLLBACK")
    holder.close()

    await wait_until(lambda: len(stored(db)) >= 200)

    assert stored(db) == [f"e{seq}" for seq in range(200)]
    assert recording.commits <= 5, recording.commits  # one per event before


async def test_no_event_is_lost_while_the_store_is_unavailable(
    recording: Recording, tmp_path: Path
) -> None:
    db = tmp_path / "events.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # every write of the recorder fails after 0.1 s
    await recording.publish(50)
    await asyncio.sleep(1.0)  # several failed attempts (backoff from 0.1 s)
    assert stored(db) == []
    holder.execute("ROLLBACK")
    holder.close()

    await wait_until(lambda: len(stored(db)) >= 50)

    assert stored(db) == [f"e{seq}" for seq in range(50)]


async def test_an_event_the_store_refuses_does_not_hold_up_the_others(
    recording: Recording, tmp_path: Path
) -> None:
    db = tmp_path / "events.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the good and the bad one land in one batch
    await recording.publish(3)
    await recording.bus.publish(EVENTS_QUEUE, event_body(3, user_id="nul\x00id"))
    await recording.publish(2, function="g")
    await asyncio.sleep(0.3)
    holder.execute("ROLLBACK")
    holder.close()

    await wait_until(lambda: len(stored(db)) >= 5)
    await asyncio.sleep(0.2)

    assert sorted(stored(db)) == ["e0", "e0", "e1", "e1", "e2"]
