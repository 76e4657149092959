"""How the operator commands print: rich tables for people, JSON for scripts, and one
exit-code convention (0 done, 1 the operation failed with the reason on stderr, 2 usage).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from agata.cli.cloud_client import CloudClient, CloudOptions, OperationFailed, TokenMissing

__all__ = [
    "EXIT_FAILED",
    "EXIT_USAGE",
    "connected",
    "duration",
    "fail",
    "print_json",
    "print_pairs",
    "print_table",
    "when",
]

EXIT_FAILED = 1
EXIT_USAGE = 2


def _console() -> Console:
    # Built per call, so it writes to the sys.stdout of the moment (tests swap it).
    return Console(file=sys.stdout, soft_wrap=True, highlight=False)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """End the command: ``error: message`` on stderr and exit ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


YesOption = Annotated[bool, typer.Option("--yes", "-y", help="do not ask")]


def confirm(yes: bool, json_out: bool, action: str, question: str) -> None:
    """Ask ``question`` before a destructive command unless ``--yes``; with ``--json``
    (no one to ask) ``--yes`` is required: a usage error naming ``action``."""
    if yes:
        return
    if json_out:
        fail(f"--json needs --yes to {action} (nothing to confirm with)", EXIT_USAGE)
    typer.confirm(question, abort=True)


@contextmanager
def connected(options: CloudOptions) -> Iterator[CloudClient]:
    """A client for the command; a missing token is a usage error (2), a refused or
    failed operation exit 1 with the cloud's reason."""
    try:
        client = options.client()
    except TokenMissing as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        with client:
            yield client
    except OperationFailed as exc:
        fail(exc.message)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    empty: str = "nothing to show",
) -> None:
    """A table with a header row; ``empty`` printed instead when there are no rows."""
    if not rows:
        typer.echo(f"({empty})")
        return
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    _console().print(table)


def print_pairs(pairs: Sequence[tuple[str, Any]]) -> None:
    """``field  value`` lines, the fields aligned."""
    table = Table(show_header=False, show_edge=False, pad_edge=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in pairs:
        table.add_row(key, _cell(value))
    _console().print(table)


def _parse(stamp: str | float | None) -> datetime | None:
    """An ISO-8601 string or seconds since the epoch (log lines, metrics) as a time."""
    if stamp is None or stamp == "":
        return None
    if isinstance(stamp, int | float):
        try:
            return datetime.fromtimestamp(float(stamp), UTC)
        except (OverflowError, OSError, ValueError):
            return None
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def when(stamp: str | float | None) -> str:
    """A time (ISO-8601 or epoch seconds) as ``YYYY-MM-DD HH:MM:SS UTC`` (``-``: none)."""
    parsed = _parse(stamp)
    if parsed is None:
        return "-" if stamp is None or stamp == "" else str(stamp)
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(start: str | None, end: str | None, now: Callable[[], datetime] | None = None) -> str:
    """How long from ``start`` to ``end`` (to now while ``end`` is None): ``1h 02m 03s``."""
    began = _parse(start)
    if began is None:
        return "-"
    ended = _parse(end) or (now or (lambda: datetime.now(UTC)))()
    seconds = max(0, int((ended - began).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
