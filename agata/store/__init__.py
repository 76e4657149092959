"""Persistent state of the cloud: tasks, devices, events, metrics, logs and tokens.

``store.py`` is the contract, ``sql_store.py`` the SQL implementation (SQLite or
PostgreSQL) and ``store_factory.create_store(url)`` picks and opens one. See
``docs/store.md``.
"""

from typing import TYPE_CHECKING, Any

from agata.store.store import (
    BundleFile,
    Device,
    DeviceTaskState,
    DeviceTaskStatus,
    EnrollmentToken,
    Event,
    LogLine,
    Metric,
    NewEvent,
    NewLogLine,
    NewTask,
    OperatorToken,
    Store,
    Task,
    TaskState,
)

__all__ = [
    "BundleFile",
    "Device",
    "DeviceTaskState",
    "DeviceTaskStatus",
    "EnrollmentToken",
    "Event",
    "LogLine",
    "Metric",
    "NewEvent",
    "NewLogLine",
    "NewTask",
    "OperatorToken",
    "Store",
    "Task",
    "TaskState",
    "create_store",
]


if TYPE_CHECKING:
    from agata.store.store_factory import create_store


def __getattr__(name: str) -> Any:
    """``create_store`` is imported on first use: it needs SQLAlchemy (the ``cloud``
    extra), while the contract above and ``store_schemes`` (read by the settings of
    every side) must import without it."""
    if name == "create_store":
        from agata.store.store_factory import create_store

        return create_store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
