"""Counters read from outside (agata/bench/meters.py) against real processes, a real
listening socket, the test RabbitMQ and the test PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import aio_pika
import pytest

from agata.bench.meters import (
    BrokerCounters,
    DatabaseCounters,
    listener_pid,
    process_cpu_seconds,
    process_rss_bytes,
    process_tree,
)
from agata.errors import AgataError

BUSY = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"


def test_cpu_seconds_of_a_child_count_its_work() -> None:
    child = subprocess.Popen([sys.executable, "-c", BUSY + "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while process_cpu_seconds(child.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_cpu_seconds(child.pid) >= 0.3
        assert process_rss_bytes(child.pid) > 1_000_000
        assert child.pid in process_tree(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert process_cpu_seconds(child.pid) == 0.0  # gone: reads as nothing, no error


def test_listener_pid_finds_the_process_that_listens() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert listener_pid(port) == os.getpid()
    with pytest.raises(AgataError, match=f"nothing listens on port {port}"):
        listener_pid(port)


async def test_broker_counters_count_published_messages(amqp_url: str, rabbitmqctl: str) -> None:
    counters = BrokerCounters(rabbitmqctl)
    received, delivered = counters.read()
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        for n in range(25):
            await channel.default_exchange.publish(aio_pika.Message(b"%d" % n), queue.name)
        for _ in range(25):
            message = await queue.get(timeout=10, no_ack=True)
            assert message is not None
    received_after, delivered_after = counters.read()
    # Other tests may share the broker: at least ours.
    assert received_after - received >= 25
    assert delivered_after >= delivered


def test_broker_counters_say_why_they_cannot_be_read() -> None:
    with pytest.raises(AgataError, match="cannot read RabbitMQ's counters"):
        BrokerCounters(f"{sys.executable} -c 'import sys; sys.exit(3)'").read()


def test_database_counters_count_transactions(pg_url: str) -> None:
    import psycopg

    database = pg_url.rsplit("/", 1)[1].split("?")[0]
    counters = DatabaseCounters(pg_url, database)
    before = counters.read()["transactions"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for _ in range(20):
            conn.execute("SELECT 1")
    deadline = time.monotonic() + 10  # a backend's counts are published when it ends
    while counters.read()["transactions"] - before < 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert counters.read()["transactions"] - before >= 20
    with pytest.raises(AgataError, match="no database 'no_such_db'"):
        DatabaseCounters(pg_url, "no_such_db").read()
