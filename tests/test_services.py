"""Smoke tests of the test services themselves: a real round trip through each.

If these fail, every test that needs RabbitMQ, PostgreSQL or Chromium would fail too;
look at ``test-output/services/`` first.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import uuid

import aio_pika
import psycopg
import pytest
from helpers import free_port

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()

        assert sock.getsockname() == ("127.0.0.1", port)


@pytest.mark.amqp
async def test_rabbitmq_publish_then_get(amqp_url: str) -> None:
    # Prepare
    body = f"agata-smoke-{uuid.uuid4()}".encode()
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"agata-smoke-{uuid.uuid4()}", auto_delete=True)

        # Execute
        await channel.default_exchange.publish(
            aio_pika.Message(body, content_type="text/plain"), routing_key=queue.name
        )
        message = await queue.get(timeout=10)
        await message.ack()

        # Assert
        assert message.body == body
        assert message.content_type == "text/plain"
        await queue.delete(if_unused=False, if_empty=False)


@pytest.mark.postgres
def test_postgres_create_insert_select(pg_url: str) -> None:
    # Prepare
    table = f"agata_smoke_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, connect_timeout=10) as conn:
        try:
            conn.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, name text NOT NULL)")

            # Execute
            conn.execute(f"INSERT INTO {table} (name) VALUES (%s), (%s)", ("alpha", "beta"))
            rows = conn.execute(f"SELECT id, name FROM {table} ORDER BY id").fetchall()

            # Assert
            assert rows == [(1, "alpha"), (2, "beta")]
        finally:
            conn.rollback()
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.commit()


@pytest.mark.browser
def test_chromium_renders_a_page(chromium_path: str) -> None:
    with tempfile.TemporaryDirectory(prefix="agata-chromium-") as profile:
        result = subprocess.run(
            [
                chromium_path,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--dump-dom",
                'data:text/html,<p id="smoke">agata</p>',
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert result.returncode == 0, result.stderr[-2000:]
    assert '<p id="smoke">agata</p>' in result.stdout
