"""``create_store`` picks the backend by URL scheme and explains what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from agata.errors import AgataError, ErrorCode
from agata.store import create_store
from agata.store.sql_store import SqlStore

from .conftest import PgSchemas


@pytest.mark.parametrize("url", ["mysql://root:pw@db/agata", "memory://", "redis://x"])
def test_unknown_scheme_is_invalid_and_named(url: str) -> None:
    with pytest.raises(AgataError) as exc:
        create_store(url)

    assert exc.value.code is ErrorCode.INVALID_ARGUMENT
    assert repr(url.split("://")[0]) in exc.value.message
    assert "pw" not in exc.value.message


def test_malformed_url_is_invalid() -> None:
    with pytest.raises(AgataError) as exc:
        create_store("not a url")

    assert exc.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_sqlite_memory_urls(url: str) -> None:
    with create_store(url) as store:
        assert isinstance(store, SqlStore)
        assert store.engine.dialect.name == "sqlite"
        assert store.list_tasks() == []


def test_sqlite_file_url_creates_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "agata.db"

    with create_store(f"sqlite:///{path}"):
        pass

    assert path.is_file()


def test_unreachable_postgresql_is_unavailable_without_the_password() -> None:
    url = "postgresql://agata:hunter2@127.0.0.1:1/agata?connect_timeout=2"

    with pytest.raises(AgataError) as exc:
        create_store(url)

    assert exc.value.code is ErrorCode.UNAVAILABLE
    assert "hunter2" not in exc.value.message and "cannot reach" in exc.value.message


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_postgresql_scheme_aliases_use_psycopg(pg_schemas: PgSchemas, scheme: str) -> None:
    url = scheme + "://" + pg_schemas.new_url().split("://", 1)[1]

    with create_store(url) as store:
        assert isinstance(store, SqlStore)
        assert store.engine.dialect.driver == "psycopg"
