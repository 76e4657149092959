"""The database URL schemes AGATA knows, in one table (no database driver imported).

The settings check a ``db_url`` against it and :func:`agata.store.store_factory.create_store`
picks its engine builder by it, so the two can never disagree on which URLs work.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DB_SCHEMES", "check_db_url", "db_scheme"]

#: URL scheme -> the backend that serves it.
DB_SCHEMES: Final[dict[str, str]] = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "postgresql+psycopg": "postgresql",
}


def db_scheme(url: str) -> str:
    """The scheme of a database URL (``postgresql`` of ``postgresql://u@h/db``)."""
    return url.split(":", 1)[0].lower() if ":" in url else ""


def check_db_url(url: str) -> str:
    """Return ``url`` if its scheme is in :data:`DB_SCHEMES`; else ValueError naming
    the known ones (never the URL: it may carry a password)."""
    if db_scheme(url) not in DB_SCHEMES:
        known = ", ".join(f"{name}://" for name in DB_SCHEMES)
        raise ValueError(f"must start with one of {known} (e.g. sqlite:///path)")
    return url
