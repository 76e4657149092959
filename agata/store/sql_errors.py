"""Translation of database errors into :class:`AgataError`.

Callers never see a driver's exception or its text (which may quote SQL and values):
they get a code and a message written here. What the database said is logged by class
and error code only, except for connection-level errors, whose text carries no data.
"""

from __future__ import annotations

import logging

from sqlalchemy import exc as sa_exc

from agata.errors import AgataError, ErrorCode

logger = logging.getLogger(__name__)

# PostgreSQL SQLSTATEs (and their classes) that mean "try again later".
_PG_RETRY = {"40001", "40P01", "55P03", "57014"}
_PG_DISK_FULL = "53100"


def _sqlite_name(orig: BaseException | None) -> str:
    return str(getattr(orig, "sqlite_errorname", "") or "")


def _pg_state(orig: BaseException | None) -> str:
    return str(getattr(orig, "sqlstate", "") or "")


def _unavailable_message(exc: sa_exc.SQLAlchemyError, busy_timeout: float) -> str:
    orig = getattr(exc, "orig", None)
    name, state = _sqlite_name(orig), _pg_state(orig)
    text = str(orig).lower() if orig is not None else ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in text:
        return (
            "the database is locked by another connection holding a write transaction "
            f"(gave up after waiting {busy_timeout:g} s); try again"
        )
    if name.startswith("SQLITE_FULL") or state == _PG_DISK_FULL or "disk is full" in text:
        return "the database storage is full; free some disk space"
    if name.startswith("SQLITE_READONLY"):
        return "the database is read-only"
    if name.startswith("SQLITE_CANTOPEN"):
        return "the database file cannot be opened (check its path and permissions)"
    if name.startswith("SQLITE_IOERR"):
        return "the database had an I/O error reading or writing its file"
    if state in _PG_RETRY:
        return "the database transaction conflicted with another one or timed out; try again"
    if isinstance(exc, sa_exc.TimeoutError):
        return "no database connection became free in time; try again"
    if state[:2] in ("", "08", "57"):
        return "cannot reach the database server; check that it is running and reachable"
    return "the database is unavailable"


def translate(
    exc: Exception, operation: str, *, conflict: str | None = None, busy_timeout: float = 0.0
) -> AgataError:
    """The :class:`AgataError` to raise instead of ``exc`` (raised during ``operation``)."""
    if isinstance(exc, AgataError):
        return exc
    orig = getattr(exc, "orig", None)
    detail = f"{type(orig or exc).__name__} {_sqlite_name(orig)}{_pg_state(orig)}".strip()
    if isinstance(exc, sa_exc.IntegrityError):
        logger.info("%s refused by a database constraint (%s)", operation, detail)
        return AgataError(
            ErrorCode.CONFLICT, conflict or f"{operation}: conflicts with stored data"
        )
    if isinstance(
        exc,
        sa_exc.OperationalError
        | sa_exc.InterfaceError
        | sa_exc.TimeoutError
        | sa_exc.DisconnectionError,
    ):
        message = _unavailable_message(exc, busy_timeout)
        # Connection-level errors quote no stored values: their text helps operators.
        logger.warning("%s: %s (%s: %s)", operation, message, detail, orig)
        return AgataError(ErrorCode.UNAVAILABLE, message)
    if isinstance(exc, sa_exc.DataError) or isinstance(exc, UnicodeError):
        logger.info("%s: value refused by the database (%s)", operation, detail)
        return AgataError(ErrorCode.INVALID_ARGUMENT, f"{operation}: a value cannot be stored")
    if isinstance(exc, sa_exc.StatementError) and isinstance(orig, ValueError | TypeError):
        logger.info("%s: value cannot be converted (%s)", operation, detail)
        return AgataError(ErrorCode.INVALID_ARGUMENT, f"{operation}: a value cannot be stored")
    # The traceback shows the SQL but no values (engines use hide_parameters=True).
    logger.error("%s failed: unexpected database error (%s)", operation, detail, exc_info=exc)
    return AgataError(ErrorCode.INTERNAL, f"{operation}: unexpected database error")
