"""The store's contract for runs: each start of a task, with what belongs to it.

A task's runs are numbered 1, 2, … in start order; ``Task.run`` is the current (or last)
one. Metrics, log lines, events and device participation carry the run they happened in;
a call that names no run means the task's current run.

Conventions (besides those of :mod:`agata.store.store`):

- A run is *active* while ``queued``, ``waiting`` or ``running``; a task has at most
  one active run, and it is the task's current run. Ending the current run (its end
  state, ``ended_at``) and updating the task's ``running``/``state``/``state_reason``
  happen in one transaction: :meth:`Store.set_task_state` does both.
- An ended run never changes state again (``CONFLICT``).
- ``list_runs`` and ``get_run`` MUST cost the same whatever the number of runs and metric
  rows of the task (indexed lookups, no scan of metrics).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agata.protocol.bundle_files import BundleFile
from agata.protocol.runs import RunState

__all__ = ["Artifact", "Run", "RunDevice", "RunState", "RunStore"]


@dataclass(frozen=True)
class RunDevice:
    """One device's part in a run. ``joined_at`` is when it first reported ``running``
    for the run (``None``: it has not yet, e.g. still downloading)."""

    task_id: str
    run: int
    user_id: str
    status: str
    reason: str
    joined_at: str | None
    last_round: int | None
    updated_at: str


@dataclass(frozen=True)
class Artifact:
    """A file a run saved, as the cloud keeps it (``sha256`` of its bytes)."""

    task_id: str
    run: int
    name: str
    size: int
    sha256: str
    saved_at: str


@dataclass(frozen=True)
class Run:
    """One run of a task (see the module docstring)."""

    task_id: str
    run: int
    state: RunState
    reason: str
    server_arguments: tuple[str, ...]
    client_arguments: tuple[str, ...]
    bundle_version: int
    files: tuple[BundleFile, ...]  # its bundle, as the task listed it when the run began
    min_devices: int
    start_deadline_s: float | None
    created_at: str
    started_at: str | None
    ended_at: str | None
    last_round: int | None = None
    last_metrics: Mapping[str, float] = field(default_factory=dict)
    devices_joined: int = 0
    artifacts: tuple[Artifact, ...] = ()


class RunStore(abc.ABC):
    """The run methods of :class:`agata.store.store.Store`."""

    @abc.abstractmethod
    def create_run(
        self,
        task_id: str,
        *,
        state: RunState | str,
        server_arguments: Sequence[str],
        client_arguments: Sequence[str],
        reason: str = "",
    ) -> Run:
        """Make the task's next run, ``queued``, ``waiting`` or ``running``, and make it
        the task's current run, in one transaction: its number is the last one plus 1,
        its bundle version and files are the task's now, ``min_devices`` and
        ``start_deadline_s`` are copied from the task. A ``queued`` run leaves the task
        not running in state ``queued``; a started one sets it running (state
        ``running``, no reason, no server pid).

        This is the start's claim: if the task has an active run or is running the call
        MUST fail with ``CONFLICT`` and change nothing (two replicas cannot both start
        it). ``NOT_FOUND`` for an unknown task; ``INVALID_ARGUMENT`` for an end state.
        """

    @abc.abstractmethod
    def start_queued_run(self, task_id: str, run: int, *, state: RunState | str) -> Run:
        """Take a ``queued`` run to ``waiting`` or ``running`` (``started_at`` now) and
        set its task running, in one transaction. ``CONFLICT`` if the run is not queued
        or not the task's current run (another replica started or stopped it);
        ``NOT_FOUND`` if the task or run is unknown."""

    @abc.abstractmethod
    def set_run_waiting_done(self, task_id: str, run: int) -> Run:
        """Take a ``waiting`` run to ``running`` (its devices joined). ``CONFLICT`` if it
        is not waiting; ``NOT_FOUND`` if unknown."""

    @abc.abstractmethod
    def get_run(self, task_id: str, run: int) -> Run:
        """The run with its artifacts; ``NOT_FOUND`` if the task or the run is unknown."""

    @abc.abstractmethod
    def list_runs(self, task_id: str, *, limit: int = 50, before: int | None = None) -> list[Run]:
        """The task's runs, newest first, at most ``limit``, with numbers below
        ``before`` if given (the next page); ``[]`` for an unknown task."""

    @abc.abstractmethod
    def list_queued_runs(self) -> list[Run]:
        """Every ``queued`` run of every task, in start order (oldest first)."""

    @abc.abstractmethod
    def count_started_runs(self) -> int:
        """How many runs are ``waiting`` or ``running`` (the cap counts these)."""

    @abc.abstractmethod
    def list_run_devices(self, task_id: str, run: int) -> list[RunDevice]:
        """The devices that took part in a run, by user id; ``[]`` if none or unknown."""

    @abc.abstractmethod
    def add_artifact(self, task_id: str, run: int, name: str, size: int, sha256: str) -> Artifact:
        """Record a saved file of a run (replacing one of the same name).
        ``NOT_FOUND`` for an unknown task or run."""

    @abc.abstractmethod
    def get_artifact(self, task_id: str, run: int, name: str) -> Artifact:
        """One artifact of a run; ``NOT_FOUND`` for an unknown task, run or name."""
