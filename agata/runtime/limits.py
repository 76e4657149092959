"""Resource limits of one task process tree (memory, CPU, open files, processes, time).

Limits come from the task (its create/update fields) or from the device's/cloud's
configuration; :meth:`Limits.merged` lets the task's value win where it sets one.
How they are enforced depends on the containment (:mod:`agata.runtime.containment`):
with cgroups the kernel counts the whole tree; without, only per-process ``setrlimit``
values are available (see ``docs/runtime.md``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agata.errors import AgataError, ErrorCode

__all__ = ["Limits"]

_MAX_MEMORY_MB = 1 << 30  # a petabyte: anything larger is a typo
_MAX_PIDS = 1 << 22
_MAX_OPEN_FILES = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits of one run; None: no limit of that kind.

    Attributes:
        memory_mb: memory of the whole process tree, MiB.
        cpu_cores: CPU time as a number of cores (0.5: half of one core).
        open_files: open file descriptors per process.
        pids: processes (and threads) of the tree at once.
        wall_seconds: the run is ended after this long.
    """

    memory_mb: int | None = None
    cpu_cores: float | None = None
    open_files: int | None = None
    pids: int | None = None
    wall_seconds: float | None = None

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any] | None, *, ignore_unknown: bool = False
    ) -> Limits:
        """Validate ``values`` (e.g. a task's ``limits`` field); raises INVALID_ARGUMENT
        naming the bad field. With ``ignore_unknown`` names this version does not know
        (a newer cloud's) are left out instead."""
        if not values:
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown and ignore_unknown:
            values = {k: v for k, v in values.items() if k in known}
        elif unknown:
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT,
                f"unknown limit(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
            )
        bounds: dict[str, tuple[type, float, float]] = {
            "memory_mb": (int, 1, _MAX_MEMORY_MB),
            "cpu_cores": (float, 0.01, 4096),
            "open_files": (int, 16, _MAX_OPEN_FILES),
            "pids": (int, 1, _MAX_PIDS),
            "wall_seconds": (float, 0.1, 366 * 86400),
        }
        checked: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                continue
            kind, low, high = bounds[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise AgataError(ErrorCode.INVALID_ARGUMENT, f"limit {name} must be a number")
            if kind is int and value != int(value):
                raise AgataError(ErrorCode.INVALID_ARGUMENT, f"limit {name} must be whole")
            if not low <= value <= high:
                raise AgataError(
                    ErrorCode.INVALID_ARGUMENT, f"limit {name} must be in [{low}, {high}]"
                )
            checked[name] = kind(value)
        return cls(**checked)

    def merged(self, task: Limits) -> Limits:
        """These limits (a configuration's) with the task's own values where it sets them."""
        return Limits(
            **{
                f.name: getattr(task, f.name)
                if getattr(task, f.name) is not None
                else getattr(self, f.name)
                for f in dataclasses.fields(self)
            }
        )

    def as_dict(self) -> dict[str, Any]:
        """The limits that are set (for records and logs)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @property
    def empty(self) -> bool:
        return not self.as_dict()
