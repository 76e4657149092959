"""Load tests: the ``load`` marker, a fresh PostgreSQL schema, a line in the output.

``pytest -m load`` runs only them, ``pytest -m "not load"`` leaves them out (each
simulated-fleet case takes about 40 s).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "load: simulated fleets against a real cloud (about 40 s per case)"
    )


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    """A URL of the test PostgreSQL server whose search_path is a new, empty schema
    (dropped after the test)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    schema = f"agata_load_{uuid.uuid4().hex[:12]}"
    admin = create_engine(make_url(pg_url).set(drivername="postgresql+psycopg"))
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
async def fresh_amqp_url(amqp_url: str) -> str:
    """``amqp_url`` with the operation queues emptied first.

    A cloud's operation queues outlive it (non-exclusive, not auto-deleted, as the
    original's wire format has them) and requests carry no expiry: after a run whose
    callers gave up (a saturated cloud), hundreds of their requests wait in the queue,
    and the next cloud on the broker serves them first — found after a failed run: 375
    enrollments in ``rpc_exec_enroll_device``, which made every later run fail. A load
    test measures its own run, so it starts from empty queues."""
    import aio_pika
    import aiormq

    from agata.protocol.operations import OPERATION_MODELS

    connection = await aio_pika.connect(amqp_url)
    try:
        for name in OPERATION_MODELS:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                continue  # no such queue yet: nothing to empty (the channel is closed)
            await queue.purge()
            await channel.close()
    finally:
        await connection.close()
    return amqp_url


@pytest.fixture
def report_line(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Write a line to the test output, past pytest's capture."""

    def write(text: str) -> None:
        with capsys.disabled():
            print(text, flush=True)

    return write
