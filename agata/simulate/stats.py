"""What a simulated fleet measured: requests and errors by operation, latencies.

Every request of every simulated device goes through :meth:`FleetStats.begin` /
:meth:`FleetStats.end`. Latencies and errors are kept per operation for the whole run,
and once more in each *window* that is open when the request starts. The usual window
is the steady one: requests after the warm-up (enrollment, first reports and bundle
downloads of the whole fleet) — the load a fleet of that size puts on the cloud day
after day, while the warm-up is a one-off burst. Failed requests count in the
latencies too (a timeout shows up in p99).

A failed request that the device sends again — as a real agent does, see
:mod:`agata.simulate.device` — is a *retry*, counted apart from the errors: it cost
time, not data. An error is a request whose purpose failed for good.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agata.simulate.histogram import LatencyHistogram

__all__ = ["OPERATIONS", "FleetStats", "OperationStats", "Window"]

#: The operations a simulated device performs, in the order of its life.
OPERATIONS = ("enroll", "update_user_info", "requesting_task", "download", "report")


@dataclass
class OperationStats:
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    errors: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return self.latency.count

    def count(self, kind: str | None, retried: bool) -> None:
        """Count a failure of ``kind`` (None: no failure) as a retry or an error."""
        if kind is not None:
            (self.retries if retried else self.errors)[kind] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            **self.latency.summary_ms(),
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
            "retries": sum(self.retries.values()),
            "retries_by_kind": dict(self.retries),
        }


def _by_kind(operations: dict[str, OperationStats], retries: bool = False) -> dict[str, int]:
    """``operation:kind`` -> count, of the errors (or the retries)."""
    return {
        f"{op}:{kind}": n
        for op, stats in operations.items()
        for kind, n in sorted((stats.retries if retries else stats.errors).items())
    }


class OperationTotals:
    """Totals over :attr:`operations` (one :class:`OperationStats` per operation): what a
    :class:`Window` and the whole run (:class:`FleetStats`) both report."""

    operations: dict[str, OperationStats]

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.operations.values())

    @property
    def errors(self) -> int:
        return sum(sum(s.errors.values()) for s in self.operations.values())

    @property
    def retries(self) -> int:
        """Failed requests that were sent again (not errors)."""
        return sum(sum(s.retries.values()) for s in self.operations.values())

    def errors_by_kind(self) -> dict[str, int]:
        """``operation:kind`` -> count, for every kind seen."""
        return _by_kind(self.operations)

    def retries_by_kind(self) -> dict[str, int]:
        """``operation:kind`` -> count of the failures that were sent again."""
        return _by_kind(self.operations, retries=True)


class Window(OperationTotals):
    """The requests that started between :attr:`start` and :attr:`end` (perf_counter)."""

    def __init__(self, name: str, start: float, origin: float) -> None:
        self.name = name
        self.start = start
        self.end: float | None = None
        self._origin = origin
        self.latency = LatencyHistogram()
        self.operations: dict[str, OperationStats] = {}

    def covers(self, started: float) -> bool:
        return self.start <= started and (self.end is None or started < self.end)

    def add(
        self, operation: str, latency: float | None, error: str | None, retried: bool = False
    ) -> None:
        stats = self.operations.setdefault(operation, OperationStats())
        if latency is not None:
            stats.latency.record(latency)
            self.latency.record(latency)
        stats.count(error, retried)

    @property
    def seconds(self) -> float:
        end = self.end if self.end is not None else time.perf_counter()
        return max(0.0, end - self.start)

    def to_json(self) -> dict[str, Any]:
        seconds = self.seconds
        return {
            "from_s": round(self.start - self._origin, 3),
            "window_s": round(seconds, 3),
            **self.latency.summary_ms(),
            "requests_per_s": round(self.latency.count / seconds, 1) if seconds > 0 else None,
            "errors": self.errors,
            "errors_by_kind": self.errors_by_kind(),
            "retries": self.retries,
            "retries_by_kind": self.retries_by_kind(),
            "operations": {op: s.to_json() for op, s in self.operations.items()},
        }


class FleetStats(OperationTotals):
    """Counters of one run; :meth:`open_window` starts a measurement window."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.operations: dict[str, OperationStats] = {op: OperationStats() for op in OPERATIONS}
        self.windows: list[Window] = []
        self._open: list[Window] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.cancelled = 0
        self.ended_at: float | None = None

    def restart_clock(self) -> None:
        """The run starts now (setup before this does not count)."""
        self.t0 = time.perf_counter()

    def open_window(self, name: str) -> Window:
        window = Window(name, time.perf_counter(), self.t0)
        self.windows.append(window)
        self._open.append(window)
        return window

    def close_window(self, window: Window) -> Window:
        if window.end is None:
            window.end = time.perf_counter()
        if window in self._open:
            self._open.remove(window)
        return window

    def window(self, name: str) -> Window | None:
        return next((w for w in self.windows if w.name == name), None)

    def begin(self) -> float:
        """A request starts; returns its start time for :meth:`end`."""
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        return time.perf_counter()

    def end(
        self, operation: str, started: float, error: str | None = None, *, retried: bool = False
    ) -> None:
        """A request started at ``started`` ended, with ``error`` (its kind) if it failed;
        ``retried``: the device sends it again, so the failure counts as a retry."""
        latency = time.perf_counter() - started
        self.in_flight -= 1
        stats = self.operations.setdefault(operation, OperationStats())
        stats.latency.record(latency)
        stats.count(error, retried)
        for window in self.windows:
            if window.covers(started):
                window.add(operation, latency, error, retried)

    def error(self, operation: str, kind: str) -> None:
        """A failure found after the request itself succeeded (e.g. a wrong checksum)."""
        self.operations.setdefault(operation, OperationStats()).errors[kind] += 1
        for window in self._open:
            window.add(operation, None, kind)

    def stop_clock(self) -> None:
        self.ended_at = time.perf_counter()
        for window in list(self._open):
            self.close_window(window)

    @property
    def elapsed(self) -> float:
        end = self.ended_at if self.ended_at is not None else time.perf_counter()
        return end - self.t0

    def to_json(self) -> dict[str, Any]:
        overall = LatencyHistogram()
        for stats in self.operations.values():
            overall.merge(stats.latency)
        elapsed = self.elapsed
        return {
            "elapsed_s": round(elapsed, 3),
            "requests": self.requests,
            "requests_per_s": round(self.requests / elapsed, 1) if elapsed > 0 else None,
            "errors": self.errors,
            "errors_by_kind": self.errors_by_kind(),
            "retries": self.retries,
            "retries_by_kind": self.retries_by_kind(),
            "operations": {op: s.to_json() for op, s in self.operations.items()},
            "all": overall.summary_ms(),
            "windows": {w.name: w.to_json() for w in self.windows},
            "peak_in_flight": self.peak_in_flight,
            "cancelled_at_stop": self.cancelled,
        }
