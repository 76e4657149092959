"""The task runtime (FTDL): ``TaskReporter`` for task bundles, the supervisor for AGATA.

``import agata.runtime`` stays light (standard library only): task bundles import
``TaskReporter`` from here. The supervisor side (asyncio, subprocesses) is imported
lazily, on first access to one of its names.
"""

from __future__ import annotations

import importlib
from typing import Any

from agata.runtime.reporter import TaskReporter

_LAZY: dict[str, str] = {
    "Error": "agata.runtime.messages",
    "Info": "agata.runtime.messages",
    "LogLine": "agata.runtime.messages",
    "Model": "agata.runtime.messages",
    "Print": "agata.runtime.messages",
    "TaskMessage": "agata.runtime.messages",
    "Trigger": "agata.runtime.messages",
    "parse_line": "agata.runtime.messages",
    "AsyncioProcessLauncher": "agata.runtime.process",
    "ProcessHandle": "agata.runtime.process",
    "ProcessLauncher": "agata.runtime.process",
    "kill_process_group": "agata.runtime.process",
    "TaskOutcome": "agata.runtime.supervisor",
    "TaskProcess": "agata.runtime.supervisor",
    "TaskState": "agata.runtime.supervisor",
}

__all__ = ["TaskReporter", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
