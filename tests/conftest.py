"""Session fixtures for the real services that some tests need.

``scripts/test.sh`` starts a private RabbitMQ and PostgreSQL (``scripts/services.sh``)
and exports their URLs; these fixtures hand them to tests:

- ``amqp_url``      ``AGATA_TEST_AMQP_URL``  e.g. ``amqp://agata:agata@127.0.0.1:24545/``
- ``pg_url``        ``AGATA_TEST_PG_URL``    e.g. ``postgresql://agata@127.0.0.1:29985/postgres``
- ``chromium_path`` ``AGATA_TEST_CHROMIUM``  e.g. ``/usr/bin/chromium``
- ``rabbitmqctl``   ``AGATA_TEST_RABBITMQCTL`` (a command line: ``services.sh rabbitmqctl``)

When a variable is unset the test is skipped, with the reason, so a bare ``pytest`` on a
laptop still runs everything else. Under CI (``CI=true``) or with
``AGATA_REQUIRE_SERVICES=1`` (which ``scripts/test.sh`` sets) a missing service FAILS the
test instead: CI must never pass by silently skipping the real-broker tests.

For a shell of your own: ``eval "$(scripts/services.sh start && scripts/services.sh env)"``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_TRUE = {"1", "true", "yes", "on"}


def services_required() -> bool:
    """True when a missing test service must fail the test rather than skip it."""
    return (
        os.environ.get("CI", "").strip().lower() in _TRUE
        or os.environ.get("AGATA_REQUIRE_SERVICES", "").strip().lower() in _TRUE
    )


def _unavailable(reason: str) -> None:
    hint = " (start it with `scripts/services.sh start`, or run `scripts/test.sh`)"
    if services_required():
        pytest.fail(
            f"{reason}{hint}; failing instead of skipping because CI=true or "
            "AGATA_REQUIRE_SERVICES=1",
            pytrace=False,
        )
    pytest.skip(f"{reason}{hint}")


def _service_env(var: str, what: str) -> str:
    value = os.environ.get(var, "").strip()
    if not value:
        _unavailable(f"{var} is not set: no {what} for this test")
    return value


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of a RabbitMQ broker for tests (``AGATA_TEST_AMQP_URL``)."""
    return _service_env("AGATA_TEST_AMQP_URL", "RabbitMQ broker")


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of a PostgreSQL server for tests (``AGATA_TEST_PG_URL``)."""
    return _service_env("AGATA_TEST_PG_URL", "PostgreSQL server")


@pytest.fixture(scope="session")
def rabbitmqctl() -> str:
    """A command line running ``rabbitmqctl`` against the test broker
    (``AGATA_TEST_RABBITMQCTL``, written by ``scripts/services.sh``)."""
    return _service_env("AGATA_TEST_RABBITMQCTL", "rabbitmqctl command")


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    """A URL of the test PostgreSQL server whose search_path is a new, empty schema
    (dropped after the test): a cloud given it as ``db_url`` starts from nothing."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    schema = f"agata_test_{uuid.uuid4().hex[:12]}"
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


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Path of a Chromium binary for browser tests (``AGATA_TEST_CHROMIUM``)."""
    path = _service_env("AGATA_TEST_CHROMIUM", "Chromium")
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        _unavailable(f"AGATA_TEST_CHROMIUM={path} is not an executable file")
    return path


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A fresh folder that task processes can see: when the tests run as root, task sides
    run as the task user (``nobody``), who cannot enter pytest's private ``tmp_path``.
    For flag files and the like that a test and a task process share."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="agata-shared-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def strict_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test runs the store in strict mode (:mod:`agata.store.loop_guard`): package
    code that calls the synchronous store on an event loop's thread fails with INTERNAL,
    in this process and in the processes the test starts (they inherit the variable)."""
    from agata.store import loop_guard

    monkeypatch.setenv(loop_guard.STRICT_ENV, "1")
    was = loop_guard.is_strict()
    loop_guard.set_strict(True)
    try:
        yield
    finally:
        loop_guard.set_strict(was)
