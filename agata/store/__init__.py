"""Persistent state of the cloud: tasks, devices, events, metrics, logs and tokens.

``store.py`` is the contract, ``sql_store.py`` the SQL implementation (SQLite or
PostgreSQL) and ``store_factory.create_store(url)`` picks and opens one. See
``docs/store.md``.
"""

from agata.store.store import (
    BundleFile,
    Device,
    DeviceTaskState,
    DeviceTaskStatus,
    EnrollmentToken,
    Event,
    LogLine,
    Metric,
    NewLogLine,
    NewTask,
    OperatorToken,
    Store,
    Task,
    TaskState,
)
from agata.store.store_factory import create_store

__all__ = [
    "BundleFile",
    "Device",
    "DeviceTaskState",
    "DeviceTaskStatus",
    "EnrollmentToken",
    "Event",
    "LogLine",
    "Metric",
    "NewLogLine",
    "NewTask",
    "OperatorToken",
    "Store",
    "Task",
    "TaskState",
    "create_store",
]
