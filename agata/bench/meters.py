"""Counters read from outside the processes they count, for ``agata bench scaling``.

- :func:`process_cpu_seconds`, :func:`process_rss_bytes`: user + system CPU time and
  resident memory of one process from Linux ``/proc`` (``/proc/<pid>/stat``, ``status``);
- :func:`process_tree`: a process and its live descendants (PostgreSQL's backends are
  children of the postmaster);
- :func:`listener_pid`: the process that listens on a loopback TCP port (the broker's
  and the database's server, found from their URLs, so the bench needs no pid files);
- :class:`BrokerCounters`: RabbitMQ's global message counters (messages received from
  publishers, delivered to consumers), read with ``rabbitmqctl eval`` — the node's own
  ``rabbit_global_counters`` (RabbitMQ >= 3.9), which the management and Prometheus
  plugins also report, so neither plugin has to be enabled;
- :class:`DatabaseCounters`: PostgreSQL's ``pg_stat_database`` of one database:
  transactions (commits + rollbacks) and rows returned, fetched and written.

Every reader raises :class:`~agata.errors.AgataError` (``UNAVAILABLE``) with the reason
when the counter cannot be read; a process that has gone reads as 0 CPU.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agata.errors import AgataError, ErrorCode

__all__ = [
    "BrokerCounters",
    "DatabaseCounters",
    "listener_pid",
    "process_cpu_seconds",
    "process_rss_bytes",
    "process_tree",
]

_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (not its children); 0 when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


def process_rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (``VmRSS``); 0 when gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live process descending from it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(inode)
    return inodes


def listener_pid(port: int) -> int:
    """The process listening on TCP ``port`` of this machine.

    Raises ``UNAVAILABLE`` when nothing listens there or its process cannot be read
    (another user's process, without root): the server must run on this machine."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not wanted:
        raise AgataError(ErrorCode.UNAVAILABLE, f"nothing listens on port {port} here")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return int(entry.name)
        except OSError:
            continue
    raise AgataError(
        ErrorCode.UNAVAILABLE,
        f"the process listening on port {port} is not readable here (another user's?)",
    )


#: Prints "<received> <delivered>" (AMQP 0-9-1 publishes in, deliveries to consumers).
_COUNTERS_EXPR = (
    "M = rabbit_global_counters:overview(), "
    "A = maps:get([{protocol,amqp091}], M), "
    "Q = maps:get([{protocol,amqp091},{queue_type,rabbit_classic_queue}], M), "
    'io:format("agata-counters ~p ~p~n", '
    "[maps:get(messages_received_total, A), maps:get(messages_delivered_total, Q)])."
)
_COUNTERS_LINE = re.compile(r"agata-counters (\d+) (\d+)")


@dataclass(frozen=True)
class BrokerCounters:
    """RabbitMQ's message counters through ``rabbitmqctl`` (a command line given as
    one string, e.g. ``rabbitmqctl -n rabbit@host`` or
    ``bash scripts/services.sh rabbitmqctl``)."""

    command: str

    def read(self) -> tuple[int, int]:
        """(messages received from publishers, messages delivered to consumers) so far."""
        argv = [*shlex.split(self.command), "eval", _COUNTERS_EXPR]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AgataError(ErrorCode.UNAVAILABLE, f"cannot run {argv[0]}: {exc}") from None
        match = _COUNTERS_LINE.search(done.stdout)
        if done.returncode != 0 or match is None:
            why = (done.stderr or done.stdout).strip()[-300:]
            raise AgataError(
                ErrorCode.UNAVAILABLE,
                f"cannot read RabbitMQ's counters with {self.command!r}: {why}",
            )
        return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class DatabaseCounters:
    """``pg_stat_database`` of ``database`` through a connection to ``url``.

    PostgreSQL publishes a backend's counts when it goes idle (at most once a second,
    so a window's figures may miss up to a second's worth at either end)."""

    url: str
    database: str

    def read(self) -> dict[str, int]:
        """transactions (commits + rollbacks), rows returned/fetched/inserted/updated/
        deleted so far."""
        import psycopg

        query = (
            "SELECT xact_commit + xact_rollback, tup_returned, tup_fetched, tup_inserted, "
            "tup_updated, tup_deleted FROM pg_stat_database WHERE datname = %s"
        )
        try:
            with psycopg.connect(_libpq_url(self.url), autocommit=True) as conn:
                row: Any = conn.execute(query, (self.database,)).fetchone()
        except psycopg.Error as exc:
            raise AgataError(
                ErrorCode.UNAVAILABLE, f"cannot read pg_stat_database: {exc}"
            ) from None
        if row is None:
            raise AgataError(ErrorCode.UNAVAILABLE, f"no database {self.database!r}")
        keys = ("transactions", "returned", "fetched", "inserted", "updated", "deleted")
        return dict(zip(keys, (int(v) for v in row), strict=True))


def _libpq_url(url: str) -> str:
    """An SQLAlchemy-style URL (``postgresql+psycopg://``) as libpq takes it."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)
