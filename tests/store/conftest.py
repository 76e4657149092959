"""Stores for the conformance suite: SQLite in memory, SQLite file, PostgreSQL.

PostgreSQL comes from ``AGATA_TEST_PG_URL`` through the ``pg_url`` fixture of
``tests/conftest.py`` (skipped when unset, failed under CI / AGATA_REQUIRE_SERVICES=1).
Each PostgreSQL store gets a fresh schema (``pg_schemas``), dropped after the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from agata.store import Store, create_store

OpenStore = Callable[..., Store]

BACKENDS = [
    "sqlite-memory",
    "sqlite-file",
    pytest.param("postgresql", marks=pytest.mark.postgres),
]


def _pg_schema_url(pg_url: str, schema: str) -> str:
    url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


class PgSchemas:
    """Creates fresh PostgreSQL schemas and drops them all at the end."""

    def __init__(self, pg_url: str) -> None:
        self._pg_url = pg_url
        self._admin = create_engine(make_url(pg_url).set(drivername="postgresql+psycopg"))
        self._schemas: list[str] = []

    def new_url(self) -> str:
        """A URL of the test server whose search_path is a new, empty schema."""
        schema = f"agata_test_{uuid.uuid4().hex[:12]}"
        with self._admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        self._schemas.append(schema)
        return _pg_schema_url(self._pg_url, schema)

    def drop_all(self) -> None:
        with self._admin.begin() as conn:
            for schema in self._schemas:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        self._admin.dispose()


@pytest.fixture
def pg_schemas(pg_url: str) -> Iterator[PgSchemas]:
    schemas = PgSchemas(pg_url)
    yield schemas
    schemas.drop_all()


@pytest.fixture(params=BACKENDS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """A function opening a fresh, empty store of the parametrized backend."""
    backend: str = request.param
    opened: list[Store] = []
    pg: PgSchemas | None = None
    if backend == "postgresql":
        pg = request.getfixturevalue("pg_schemas")

    def _open(**options: Any) -> Store:
        if backend == "sqlite-memory":
            url = "sqlite://"
        elif backend == "sqlite-file":
            url = f"sqlite:///{tmp_path / f'store-{len(opened)}.db'}"
        else:
            assert pg is not None
            url = pg.new_url()
        store = create_store(url, **options)
        opened.append(store)
        return store

    yield _open

    for store in opened:  # before pg_schemas drops the schemas
        store.close()


@pytest.fixture
def store(open_store: OpenStore) -> Store:
    return open_store()
