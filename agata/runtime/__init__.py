"""The task runtime (FTDL): ``TaskReporter`` for task bundles, the supervisor for AGATA.

``import agata.runtime`` stays light (standard library only): task bundles import
``TaskReporter`` from here. The supervisor side (asyncio, subprocesses) is imported
lazily, on first access to one of its names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agata.runtime.reporter import TaskReporter

if TYPE_CHECKING:
    from agata.runtime.messages import (
        Error,
        Info,
        Model,
        OutputLine,
        Print,
        Stream,
        TaskMessage,
        Trigger,
        parse_line,
    )
    from agata.runtime.process import (
        AsyncioProcessLauncher,
        ProcessHandle,
        ProcessLauncher,
        kill_process_group,
        task_environment,
    )
    from agata.runtime.supervisor import MessageCallback, ProcessState, TaskOutcome, TaskProcess

_LAZY: dict[str, str] = {
    "Error": "agata.runtime.messages",
    "Info": "agata.runtime.messages",
    "OutputLine": "agata.runtime.messages",
    "Model": "agata.runtime.messages",
    "Print": "agata.runtime.messages",
    "Stream": "agata.runtime.messages",
    "TaskMessage": "agata.runtime.messages",
    "Trigger": "agata.runtime.messages",
    "parse_line": "agata.runtime.messages",
    "AsyncioProcessLauncher": "agata.runtime.process",
    "ProcessHandle": "agata.runtime.process",
    "ProcessLauncher": "agata.runtime.process",
    "kill_process_group": "agata.runtime.process",
    "task_environment": "agata.runtime.process",
    "MessageCallback": "agata.runtime.supervisor",
    "TaskOutcome": "agata.runtime.supervisor",
    "TaskProcess": "agata.runtime.supervisor",
    "ProcessState": "agata.runtime.supervisor",
}

__all__ = [  # noqa: RUF022 - the reporter first, then the lazy names by module
    "TaskReporter",
    "Error",
    "Info",
    "OutputLine",
    "Model",
    "Print",
    "Stream",
    "TaskMessage",
    "Trigger",
    "parse_line",
    "AsyncioProcessLauncher",
    "ProcessHandle",
    "ProcessLauncher",
    "kill_process_group",
    "task_environment",
    "MessageCallback",
    "TaskOutcome",
    "TaskProcess",
    "ProcessState",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
