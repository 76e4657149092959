"""Build a :class:`Store` from a database URL.

The backend is picked by the URL's scheme through one alias table:

=============================  ==============================================
``sqlite://``                  SQLite in memory (tests, throw-away demos)
``sqlite:///agata.db``         SQLite file, relative path (the default)
``sqlite:////var/lib/a.db``    SQLite file, absolute path
``postgresql://u:p@h:5432/db`` PostgreSQL through psycopg 3 (also
                               ``postgres://`` and ``postgresql+psycopg://``)
=============================  ==============================================

Engines are created here, on call, never at import time. SQLite connections get
``journal_mode=WAL`` (files), ``synchronous=NORMAL``, ``foreign_keys=ON`` and
``busy_timeout``; write transactions start with ``BEGIN IMMEDIATE``. PostgreSQL
connections get TCP keepalives and are checked without a round trip when taken from the
pool (:func:`connection_lost`), so a restarted server costs no failed call.
"""

from __future__ import annotations

import json
import logging
import select
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.pool import StaticPool

from agata.errors import invalid
from agata.store.async_store import DEFAULT_READ_WORKERS, DEFAULT_WRITE_WORKERS
from agata.store.sql_store import DEFAULT_LOG_CAP, WRITE_OPTION, SqlStore
from agata.store.store import Store
from agata.store.store_schemes import DB_SCHEMES

__all__ = ["DEFAULT_BUSY_TIMEOUT", "SCHEMES", "create_store"]

logger = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds a SQLite write waits for another writer before failing with UNAVAILABLE."""
POOL_SIZE = DEFAULT_READ_WORKERS + DEFAULT_WRITE_WORKERS + 2
"""Connections kept open: one per thread of an :class:`AsyncStore` and two for code
without a loop. Fewer, and connections past the pool would be opened and closed per call."""


POOL_RECYCLE_SECONDS = 1800
"""A pooled PostgreSQL connection is replaced after this long (firewalls and proxies
between the cloud and its database drop idle connections after an hour or more, often
silently)."""
PG_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
"""libpq's TCP keepalives: a connection whose server vanished without closing it (a
machine or network gone) is found dead within about a minute, even while idle in the
pool (then :func:`connection_lost` sees it)."""


def _json_dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def _sqlite_engine(url: URL, busy_timeout: float, echo: bool) -> Engine:
    database = url.database or ""
    memory = database in ("", ":memory:")
    if not memory and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"pool_size": POOL_SIZE, "max_overflow": 4}
    if memory:
        # One connection shared by every caller: the database lives as long as the engine.
        options = {"poolclass": StaticPool}
    engine = create_engine(
        url.set(drivername="sqlite+pysqlite"),
        connect_args={"check_same_thread": False, "timeout": busy_timeout},
        hide_parameters=True,
        json_serializer=_json_dumps,
        echo=echo,
        **options,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below): pysqlite's own transaction handling would
        # start transactions late and never as IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not memory:
                mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    logger.warning("SQLite refused WAL mode (journal_mode=%s)", mode)
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _postgresql_engine(url: URL, busy_timeout: float, echo: bool) -> Engine:
    del busy_timeout  # PostgreSQL waits on row locks, not on a file lock
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise invalid(
            "PostgreSQL needs the psycopg driver: pip install 'agata[postgres]'"
        ) from None
    engine = create_engine(
        url.set(drivername="postgresql+psycopg"),
        pool_size=POOL_SIZE,
        max_overflow=4,
        pool_recycle=POOL_RECYCLE_SECONDS,
        connect_args=dict(PG_KEEPALIVES),
        hide_parameters=True,
        json_serializer=_json_dumps,
        echo=echo,
    )

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # The pool retries with a new connection (and drops the rest of the pool's older
        # ones when a statement later meets a dead one: SQLAlchemy's disconnect handling).
        if connection_lost(dbapi_connection):
            raise DisconnectionError("the database server closed this pooled connection")

    return engine


def connection_lost(dbapi_connection: Any) -> bool:
    """Whether an idle pooled psycopg connection is known dead, without a round trip.

    An idle connection is never sent anything unasked (no ``LISTEN`` here): a readable
    socket means the server closed it (a restart, ``pg_terminate_backend``, an idle
    timeout: PostgreSQL sends its ``FATAL`` and closes) or the kernel found the peer gone
    (TCP keepalives, :data:`PG_KEEPALIVES`). One ``poll`` system call instead of the
    ``SELECT 1`` that ``pool_pre_ping`` sends before every transaction.
    """
    if dbapi_connection.closed or dbapi_connection.broken:
        return True
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


_BUILDERS: dict[str, Callable[[URL, float, bool], Engine]] = {
    "sqlite": _sqlite_engine,
    "postgresql": _postgresql_engine,
}
SCHEMES: dict[str, Callable[[URL, float, bool], Engine]] = {
    scheme: _BUILDERS[backend] for scheme, backend in DB_SCHEMES.items()
}
"""URL scheme → engine builder (the schemes are :data:`~agata.store.store_schemes.DB_SCHEMES`)."""


def create_store(
    url: str,
    *,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    log_cap: int = DEFAULT_LOG_CAP,
    echo: bool = False,
) -> Store:
    """Open the store at ``url``, creating (or checking) its schema.

    Unknown or malformed URLs fail with ``INVALID_ARGUMENT`` naming only the scheme (a
    URL may carry a password); an unreachable database with ``UNAVAILABLE``.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        raise invalid("malformed database URL: expected sqlite:///path or postgresql://…") from None
    build = SCHEMES.get(parsed.drivername)
    if build is None:
        known = ", ".join(sorted(SCHEMES))
        raise invalid(f"unsupported database URL scheme {parsed.drivername!r} (known: {known})")
    if busy_timeout < 0:
        raise invalid("busy_timeout must not be negative")
    engine = build(parsed, busy_timeout, echo)
    try:
        store = SqlStore(engine, log_cap=log_cap, busy_timeout=busy_timeout)
        store.initialize()
    except BaseException:
        engine.dispose()
        raise
    if engine.dialect.name == "sqlite":
        where = parsed.database or ":memory:"
    else:
        where = f"{parsed.host}:{parsed.port or 5432}/{parsed.database}"
    logger.info("store opened: %s %s", engine.dialect.name, where)
    return store
