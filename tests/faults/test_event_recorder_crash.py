"""The event recorder killed while it stores a stream of events, then started again: no
event the broker handed it is lost (issue 15).

The recorder stores the ``events`` queue in batches and acknowledges a delivery only
after the transaction holding its event committed. A recorder that acknowledged first
would lose the events of the batch under way when it is killed; one that stores and
then acknowledges may store some twice (the ones committed but not yet acknowledged),
which an audit trail of timed events tolerates.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agata.bus.amqp_bus import AmqpBus
from agata.bus.bus import EVENTS_QUEUE
from agata.bus.envelope import encode

pytestmark = pytest.mark.amqp

RECORDER = """
import asyncio, sys
from agata.bus.amqp_bus import AmqpBus
from agata.cloud.services.events import EventRecorder
from agata.cloud.services.notifier import Notifier
from agata.store import create_store

async def main():
    bus = AmqpBus(sys.argv[1])
    await bus.connect()
    recorder = EventRecorder(bus, create_store(sys.argv[2]), Notifier(bus))
    await recorder.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

EVENTS = 3000


def stored(db: Path) -> list[int]:
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        try:
            rows = conn.execute("SELECT event FROM events WHERE service = 'crash-test'").fetchall()
        except sqlite3.OperationalError:  # the schema is not there yet
            return []
    return [int(row[0]) for row in rows]


async def wait_until(condition: object, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def start_recorder(amqp_url: str, db: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", RECORDER, amqp_url, f"sqlite:///{db}"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


async def test_a_recorder_killed_mid_stream_loses_no_event(amqp_url: str, tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    bus = AmqpBus(amqp_url)
    await bus.connect()
    first = await asyncio.to_thread(start_recorder, amqp_url, db)
    second: subprocess.Popen[str] | None = None
    try:
        for seq in range(EVENTS):
            body = {"time": time.time(), "service": "crash-test", "function": "f"}
            await bus.publish(EVENTS_QUEUE, encode({**body, "event": str(seq)}))
        # Killed while it is storing: some stored, most not yet.
        await wait_until(lambda: len(stored(db)) >= EVENTS // 10)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        partly = set(stored(db))
        assert len(partly) < EVENTS, "the recorder stored everything before it was killed"

        second = await asyncio.to_thread(start_recorder, amqp_url, db)
        await wait_until(lambda: set(stored(db)) >= set(range(EVENTS)))

        assert set(stored(db)) == set(range(EVENTS))
    finally:
        for child in (first, second):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait(30)
        await bus.close()
