"""The SQL schema of the store (SQLAlchemy Core), shared by SQLite and PostgreSQL.

:data:`SCHEMA_VERSION` is the version these tables describe. It is written to the
one-row ``schema_version`` table when the schema is created; a change to the tables
MUST bump it and add a migration step to :mod:`agata.store.sql_store` (see
``docs/store.md``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

SCHEMA_VERSION = 7  # 2: tasks.limits; 3: password hash; 4: device queries; 5: tasks.kind;
# 6: runs; 7: device_tasks.quarantined_until

_ID = 255


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so the value is stored as
    naive UTC text (which sorts and compares correctly) and made aware again on reading.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utc_now() -> datetime:
    """Now, as the store writes it into a :class:`UtcDateTime` column."""
    return datetime.now(UTC)


@overload
def iso(value: datetime) -> str: ...
@overload
def iso(value: None) -> None: ...
def iso(value: datetime | None) -> str | None:
    """``2026-01-31T12:00:00.000000Z``: the one date format the store returns (None for
    a column without a value)."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# BIGINT autoincrement needs INTEGER PRIMARY KEY on SQLite to be its rowid.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    CheckConstraint("id = 1", name="schema_version_one_row"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", String(_ID), primary_key=True),
    Column("host", String(_ID), nullable=False),
    Column("port", Integer, nullable=False),
    Column("username", String(_ID), nullable=False),
    Column("password", Text, nullable=False),  # agata.store.passwords form (since 3)
    Column("selection_criteria", Text, nullable=False),
    Column("server_arguments", JSON, nullable=False),
    Column("client_arguments", JSON, nullable=False),
    Column("running", Boolean, nullable=False),
    Column("state", String(16), nullable=False),
    Column("state_reason", Text, nullable=False),
    Column("server_pid", BigInteger, nullable=True),
    Column("version", Integer, nullable=False),
    Column("log_seq", BigInteger, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("limits", JSON, nullable=True),  # since version 2; NULL: no limits
    # Since version 6: the current (or last) run (NULL: never started) and scheduling.
    Column("run", Integer, nullable=True),
    Column("min_devices", Integer, nullable=False, server_default="0"),
    Column("start_deadline_s", Double, nullable=True),
    Column("kind", String(16), nullable=False, server_default="script"),  # since version 5
    Index("ix_tasks_running", "running"),
)

# Since version 6: each start of a task. ``files`` is the bundle listing it started
# with ([[name, size, sha256], ...]); ``last_*`` are kept by add_metric so a list of runs
# never reads metrics.
runs = Table(
    "runs",
    metadata,
    Column("task_id", ForeignKey("tasks.task_id", ondelete="CASCADE"), primary_key=True),
    Column("run", Integer, primary_key=True, autoincrement=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("server_arguments", JSON, nullable=False),
    Column("client_arguments", JSON, nullable=False),
    Column("bundle_version", Integer, nullable=False),
    Column("files", JSON, nullable=False),
    Column("min_devices", Integer, nullable=False),
    Column("start_deadline_s", Double, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("started_at", UtcDateTime, nullable=True),
    Column("ended_at", UtcDateTime, nullable=True),
    Column("last_round", Integer, nullable=True),
    Column("last_metrics", JSON, nullable=True),
    Column("last_source", String(_ID), nullable=True),
    Column("devices_joined", Integer, nullable=False),
    Index("ix_runs_state_created", "state", "created_at"),
)

# Since version 6: each device's part in a run.
run_devices = Table(
    "run_devices",
    metadata,
    Column("task_id", String(_ID), primary_key=True),
    Column("run", Integer, primary_key=True, autoincrement=False),
    Column("user_id", String(_ID), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("joined_at", UtcDateTime, nullable=True),
    Column("last_round", Integer, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
    ForeignKeyConstraint(["task_id", "run"], ["runs.task_id", "runs.run"], ondelete="CASCADE"),
)

# Since version 6: files a run saved (TaskReporter.save_artifact), kept by the cloud.
run_artifacts = Table(
    "run_artifacts",
    metadata,
    Column("task_id", String(_ID), primary_key=True),
    Column("run", Integer, primary_key=True, autoincrement=False),
    Column("name", String(_ID), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("saved_at", UtcDateTime, nullable=False),
    ForeignKeyConstraint(["task_id", "run"], ["runs.task_id", "runs.run"], ondelete="CASCADE"),
)

task_tags = Table(
    "task_tags",
    metadata,
    Column("task_id", ForeignKey("tasks.task_id", ondelete="CASCADE"), primary_key=True),
    Column("tag", String(_ID), primary_key=True),
    Column("position", Integer, nullable=False),
)

task_files = Table(
    "task_files",
    metadata,
    Column("task_id", ForeignKey("tasks.task_id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(1024), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
)

devices = Table(
    "devices",
    metadata,
    Column("user_id", String(_ID), primary_key=True),
    Column("data_qnt", Double, nullable=True),
    Column("avg_acc_contrib", Double, nullable=True),
    Column("avg_disconnection_per_round", Double, nullable=True),
    Column("extra", JSON, nullable=False),
    Column("credential_hash", String(_ID), nullable=True),
    Column("last_seen", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),  # since version 3
    # Since version 3: a page of devices sorted or filtered by these reads an index.
    Index("ix_devices_last_seen", "last_seen", "user_id"),
    Index("ix_devices_created_at", "created_at", "user_id"),
    Index("ix_devices_data_qnt", "data_qnt", "user_id"),
    Index("ix_devices_avg_acc_contrib", "avg_acc_contrib", "user_id"),
    Index("ix_devices_avg_disconnection", "avg_disconnection_per_round", "user_id"),
)

device_sensors = Table(
    "device_sensors",
    metadata,
    Column("user_id", ForeignKey("devices.user_id", ondelete="CASCADE"), primary_key=True),
    Column("sensor", String(_ID), primary_key=True),
    Index("ix_device_sensors_sensor", "sensor", "user_id"),  # since version 3 (covering)
)

# Since version 3: the text and number values of each device's ``extra`` (a copy kept by
# upsert_device), so a filter on an attribute reads an index instead of every record.
device_attributes = Table(
    "device_attributes",
    metadata,
    Column("user_id", ForeignKey("devices.user_id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(_ID), primary_key=True),
    Column("text_value", Text, nullable=True),
    Column("num_value", Double, nullable=True),
    # Covering (user_id last): a filter reads the index alone.
    Index("ix_device_attributes_text", "name", "text_value", "user_id"),
    Index("ix_device_attributes_num", "name", "num_value", "user_id"),
)

device_tasks = Table(
    "device_tasks",
    metadata,
    Column("user_id", ForeignKey("devices.user_id", ondelete="CASCADE"), primary_key=True),
    Column("task_id", ForeignKey("tasks.task_id", ondelete="CASCADE"), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("quarantined_until", UtcDateTime, nullable=True),  # since version 6
    Index("ix_device_tasks_task", "task_id"),
    Index("ix_device_tasks_status", "status", "user_id"),  # since version 3
)

# No foreign keys: events are an audit trail that outlives tasks and devices.
events = Table(
    "events",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("time", Double, nullable=False),
    Column("service", String(_ID), nullable=False),
    Column("function", String(_ID), nullable=False),
    Column("event", String(_ID), nullable=False),
    Column("task_id", String(_ID), nullable=True),
    Column("user_id", String(_ID), nullable=True),
    Column("data", JSON, nullable=False),
    Column("run", Integer, nullable=True),  # since version 6
    Index("ix_events_time", "time"),
    Index("ix_events_task_time", "task_id", "time"),
    Index("ix_events_task_run_time", "task_id", "run", "time"),  # since version 6
)

metrics = Table(
    "metrics",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("task_id", ForeignKey("tasks.task_id", ondelete="CASCADE"), nullable=False),
    Column("round", Integer, nullable=False),
    Column("source", String(_ID), nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("time", Double, nullable=False),
    Column("run", Integer, nullable=True),  # since version 6 (NULL: no run)
    Index("ix_metrics_task_round", "task_id", "round"),
    Index("ix_metrics_task_run_round", "task_id", "run", "round"),  # since version 6
)

# seq comes from tasks.log_seq, so trimming a task's log is a range delete on the key.
log_lines = Table(
    "log_lines",
    metadata,
    Column("task_id", ForeignKey("tasks.task_id", ondelete="CASCADE"), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("source", String(_ID), nullable=False),
    Column("stream", String(_ID), nullable=False),
    Column("text", Text, nullable=False),
    Column("time", Double, nullable=False),
    Column("run", Integer, nullable=True),  # since version 6 (NULL: no run)
    Index("ix_log_lines_task_run_seq", "task_id", "run", "seq"),  # since version 6
)

operator_tokens = Table(
    "operator_tokens",
    metadata,
    Column("token_id", String(64), primary_key=True),
    Column("name", String(_ID), nullable=False),
    Column("token_hash", String(_ID), nullable=False, unique=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked", Boolean, nullable=False),
)

enrollment_tokens = Table(
    "enrollment_tokens",
    metadata,
    Column("token_id", String(64), primary_key=True),
    Column("name", String(_ID), nullable=False),
    Column("token_hash", String(_ID), nullable=False, unique=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("uses_left", Integer, nullable=False),
    Column("revoked", Boolean, nullable=False),
)
