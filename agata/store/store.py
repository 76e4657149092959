"""The store contract: what AGATA's cloud keeps, and the rules every backend follows.

Records are plain frozen dataclasses; they are what a :class:`Store` returns. Inputs that
the store completes (ids, dates, versions) have their own ``New*`` dataclasses.

Conventions every implementation MUST follow:

- Every method is one transaction: it either applies all of its writes or none.
- Failures are raised as :class:`agata.errors.AgataError`, never as a backend's own
  exception and never with raw SQL text in the message: ``NOT_FOUND`` for an unknown id,
  ``CONFLICT`` for a duplicate or a forbidden state, ``INVALID_ARGUMENT`` for a value the
  store cannot keep, ``UNAVAILABLE`` when the database cannot be reached, is locked or
  is full (the caller may retry later).
- ``get_*`` raises ``NOT_FOUND``; ``list_*`` returns an empty list for an unknown parent
  id; ``find_*`` / ``consume_*`` (lookups by a secret's hash) return ``None`` when nothing
  matches, because "no such token" is an ordinary answer during authentication.
- Dates (``created_at``, ``updated_at``, ``last_seen``, ``expires_at``) are kept in UTC and
  returned as ISO-8601 strings with microseconds and a ``Z`` suffix
  (``2026-01-31T12:00:00.000000Z``). Times of events, metrics and log lines are epoch
  seconds (``float``), as on the wire.
- A task's legacy download password is stored as a salted slow hash, never in clear.
- Secrets (a task's password and its hash, token and credential hashes) are excluded
  from ``repr`` and MUST never be logged.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any

from agata.protocol.bundle_files import BundleFile
from agata.store.run_store import Run, RunStore

if TYPE_CHECKING:
    from agata.store.queries import DevicePage, DeviceQuery

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
    "TaskProgress",
    "TaskState",
]

SECRET: dict[str, Any] = {"secret": True}
"""Field metadata marking a value that must never be logged or shown."""


class TaskState(StrEnum):
    """Where a task's server side is. ``RUNNING`` iff the task's ``running`` flag is set;
    ``QUEUED``: its current run waits for the cloud's cap of running runs."""

    STOPPED = "stopped"
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


class TaskKind(StrEnum):
    """What a task's bundle is and how its sides are run.

    ``SCRIPT``: a ``server.py`` and a ``client.py`` on Flower's ``start_server`` /
    ``start_client`` (the original's contract). ``FLOWER_APP``: a Flower App project run on
    Flower's Deployment Runtime (``docs/flower-apps.md``).
    """

    SCRIPT = "script"
    FLOWER_APP = "flower-app"


class DeviceTaskStatus(StrEnum):
    """What a device is doing with a task; ``QUARANTINED`` keeps it from running it again."""

    DOWNLOADING = "downloading"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    QUARANTINED = "quarantined"
    STOPPED = "stopped"  # the device stopped it (the task was stopped or no longer matches)


@dataclass(frozen=True)
class NewTask:
    """What the operator gives to register a task."""

    task_id: str
    host: str
    port: int
    username: str
    password: str = field(repr=False, metadata=SECRET)
    selection_criteria: str = ""
    server_arguments: Sequence[str] = ()
    client_arguments: Sequence[str] = ()
    tags: Sequence[str] = ()
    files: Sequence[BundleFile] = ()
    limits: Mapping[str, Any] = field(default_factory=dict)
    min_devices: int = 0
    start_deadline_s: float | None = None
    kind: TaskKind = TaskKind.SCRIPT


@dataclass(frozen=True)
class Task:
    """A registered task.

    ``password_hash`` is the legacy download credential as
    :func:`agata.store.passwords.hash_password` stores it (``""``: no password); the
    clear password is never kept. It is secret all the same: it keys the per-device
    download passwords (:mod:`agata.cloud.credentials.download_passwords`). ``server_pid``
    is the process group of the running server side. ``version`` starts at 1 and grows by
    one each time the bundle files are replaced. ``run`` is the number of its current (or
    last) run, ``None`` before its first start (:mod:`agata.store.run_store`).
    """

    task_id: str
    host: str
    port: int
    username: str
    password_hash: str = field(repr=False, metadata=SECRET)
    selection_criteria: str = ""
    server_arguments: tuple[str, ...] = ()
    client_arguments: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    running: bool = False
    state: TaskState = TaskState.STOPPED
    state_reason: str = ""
    server_pid: int | None = None
    created_at: str = ""
    updated_at: str = ""
    files: tuple[BundleFile, ...] = ()
    version: int = 1
    limits: Mapping[str, Any] = field(default_factory=dict)  # agata.runtime.limits names
    run: int | None = None
    min_devices: int = 0
    start_deadline_s: float | None = None
    kind: TaskKind = TaskKind.SCRIPT


@dataclass(frozen=True)
class Device:
    """A device (a "user" in the seed's words) and what it reported about itself."""

    user_id: str
    data_qnt: float | None = None
    avg_acc_contrib: float | None = None
    avg_disconnection_per_round: float | None = None
    sensors: frozenset[str] = frozenset()
    extra: Mapping[str, Any] = field(default_factory=dict)
    credential_hash: str | None = field(default=None, repr=False, metadata=SECRET)
    last_seen: str = ""
    created_at: str = ""
    revoked_at: str | None = None  # when its credential was revoked (none given since)


@dataclass(frozen=True)
class DeviceTaskState:
    """The last status a device reported for a task; ``quarantined_until`` (ISO time)
    is when a ``QUARANTINED`` status ends, as the device said (None: not said)."""

    user_id: str
    task_id: str
    status: DeviceTaskStatus
    reason: str
    updated_at: str
    quarantined_until: str | None = None


@dataclass(frozen=True)
class Event:
    """A timed event of a component (the seed's ``events`` queue), kept for experiments."""

    id: int
    time: float
    service: str
    function: str
    event: str
    task_id: str | None = None
    user_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    run: int | None = None  # the run of its task it happened in (None: no run)


@dataclass(frozen=True)
class NewEvent:
    """An event to append (:meth:`Store.add_events`); ``time`` defaults to now, ``run``
    to its task's current run."""

    service: str
    function: str
    event: str
    time: float | None = None
    task_id: str | None = None
    user_id: str | None = None
    data: Mapping[str, Any] | None = None
    run: int | None = None


@dataclass(frozen=True)
class Metric:
    """Metrics of one round from one source (``"server"`` or a device's user id)."""

    id: int
    task_id: str
    round: int
    source: str
    metrics: Mapping[str, float]
    time: float
    run: int | None = None


@dataclass(frozen=True)
class TaskProgress:
    """How far a task is, as its views show it: its current (or last) run's record
    (``None``: never started) and the devices whose status for it is ``running``, by
    user id."""

    task_id: str
    run: Run | None = None
    devices_running: tuple[str, ...] = ()


@dataclass(frozen=True)
class NewLogLine:
    """A line of output to append to a task's log; ``time`` defaults to now."""

    source: str
    stream: str
    text: str
    time: float | None = None


@dataclass(frozen=True)
class LogLine:
    """A stored log line; ``seq`` grows by one per line of the task, from 1."""

    task_id: str
    seq: int
    source: str
    stream: str
    text: str
    time: float
    run: int | None = None


@dataclass(frozen=True)
class OperatorToken:
    """An operator's API token; only its hash is stored."""

    token_id: str
    name: str
    token_hash: str = field(repr=False, metadata=SECRET)
    created_at: str = ""
    revoked: bool = False


@dataclass(frozen=True)
class EnrollmentToken:
    """A token a new device presents once to obtain its credential; hash only."""

    token_id: str
    name: str
    token_hash: str = field(repr=False, metadata=SECRET)
    created_at: str = ""
    expires_at: str | None = None
    uses_left: int = 1
    revoked: bool = False


class Store(RunStore):
    """Persistent state of the cloud side. See the module docstring for the conventions,
    and :mod:`agata.store.run_store` for runs."""

    # -- tasks ---------------------------------------------------------------------------

    @abc.abstractmethod
    def create_task(self, task: NewTask) -> Task:
        """Register a task, stopped, at version 1.

        If a task with the same id exists, storing MUST fail with ``CONFLICT`` and change
        nothing. Tags are kept in order without duplicates; duplicate file names MUST be
        refused with ``INVALID_ARGUMENT``. The password is stored as a salted slow hash
        (:func:`agata.store.passwords.hash_password`), never in clear.
        """

    @abc.abstractmethod
    def get_task(self, task_id: str) -> Task:
        """The task with its tags and files; ``NOT_FOUND`` if the id is unknown."""

    @abc.abstractmethod
    def list_tasks(self, running: bool | None = None) -> list[Task]:
        """All tasks (or only those whose ``running`` flag equals ``running``), oldest first."""

    @abc.abstractmethod
    def list_running_tasks(self) -> list[Task]:
        """The running tasks with tags and files, oldest first.

        Called on every device poll: it MUST NOT issue a query per task.
        """

    @abc.abstractmethod
    def task_progress(self, task_ids: Sequence[str]) -> dict[str, TaskProgress]:
        """The progress of each of these tasks (unknown ids: an empty progress).

        Called for every task a listing shows: it MUST NOT issue a query per task.
        """

    @abc.abstractmethod
    def update_task(
        self,
        task_id: str,
        *,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        selection_criteria: str | None = None,
        server_arguments: Sequence[str] | None = None,
        client_arguments: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
        limits: Mapping[str, Any] | None = None,
        min_devices: int | None = None,
        start_deadline_s: float | None = None,
        kind: TaskKind | str | None = None,
    ) -> Task:
        """Change the given fields (``None`` = leave as is) and bump ``updated_at``.
        ``limits`` replaces the task's limits as a whole (``{}``: none). ``password`` is
        given in clear and stored hashed (``""``: no password). ``start_deadline_s`` 0
        clears the deadline.

        MUST NOT touch the running flag, state, files, version, metrics, logs or events.
        ``NOT_FOUND`` if the id is unknown. With no field given nothing is written.
        """

    @abc.abstractmethod
    def set_task_state(
        self,
        task_id: str,
        *,
        running: bool,
        state: TaskState | str,
        reason: str = "",
        server_pid: int | None = None,
        expected_running: bool | None = None,
    ) -> Task:
        """Record where the server side is.

        ``running`` MUST agree with ``state`` (true iff ``state`` is ``running``), else
        ``INVALID_ARGUMENT``. An end (``stopped``/``finished``/``failed``) also ends the
        task's current run, if active, with that state and reason, in the same
        transaction. ``expected_running=False`` also refuses a task whose run is
        queued. If ``expected_running`` is given and the stored flag differs, the call
        MUST fail with ``CONFLICT`` and change nothing (so two replicas cannot both start
        the same task). ``NOT_FOUND`` if the id is unknown.
        """

    @abc.abstractmethod
    def set_task_files(self, task_id: str, files: Sequence[BundleFile]) -> Task:
        """Replace the bundle's file list and bump ``version`` by one."""

    @abc.abstractmethod
    def delete_task(self, task_id: str) -> None:
        """Delete a task with its tags, files, runs, metrics, log lines and device states.

        A running or queued task MUST NOT be deleted (``CONFLICT``). Events are an audit trail and
        are kept. ``NOT_FOUND`` if the id is unknown.
        """

    # -- devices -------------------------------------------------------------------------

    @abc.abstractmethod
    def upsert_device(
        self,
        user_id: str,
        *,
        data_qnt: float | None = None,
        avg_acc_contrib: float | None = None,
        avg_disconnection_per_round: float | None = None,
        sensors: Iterable[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Device:
        """Insert the device if new, else change the given fields (``None`` = keep).

        ``sensors`` and ``extra`` replace the stored ones as a whole (sensors as a set).
        ``last_seen`` becomes now. Safe against a concurrent upsert of the same id.
        """

    @abc.abstractmethod
    def get_device(self, user_id: str) -> Device:
        """The device; ``NOT_FOUND`` if the id is unknown."""

    @abc.abstractmethod
    def list_devices(self) -> list[Device]:
        """All devices, by user id."""

    @abc.abstractmethod
    def query_devices(self, query: DeviceQuery) -> DevicePage:
        """One page of the devices meeting every condition of ``query``, in its order
        (ties by user id), and how many meet them in all. ``INVALID_ARGUMENT`` when its
        ``predicate`` would have to be applied to more than ``scan_limit`` devices."""

    @abc.abstractmethod
    def delete_device(self, user_id: str) -> None:
        """Remove a device, its sensors, credential and task states (decommission);
        its events and the metrics it reported stay. ``NOT_FOUND`` if unknown."""

    @abc.abstractmethod
    def touch_device(self, user_id: str) -> None:
        """Set ``last_seen`` to now; ``NOT_FOUND`` if the id is unknown."""

    @abc.abstractmethod
    def touch_devices(self, user_ids: Iterable[str]) -> int:
        """Set ``last_seen`` to now for these devices, in one transaction; unknown ids
        are skipped. Returns how many were updated."""

    @abc.abstractmethod
    def find_device_by_credential_hash(self, credential_hash: str) -> str | None:
        """The user id of the device holding a credential with this hash, else ``None``."""

    @abc.abstractmethod
    def set_device_credential(self, user_id: str, credential_hash: str | None) -> None:
        """Store (or with ``None`` remove) the hash of a device's credential; removing
        sets ``revoked_at`` to now, storing one clears it."""

    @abc.abstractmethod
    def claim_device_credential(self, user_id: str, credential_hash: str) -> bool:
        """Give a device its credential's hash only if it holds none, in one statement
        (two enrollments of one id, on any replicas, cannot both win); ``False`` when it
        already holds one. ``NOT_FOUND`` if the id is unknown."""

    @abc.abstractmethod
    def set_device_task_status(
        self,
        user_id: str,
        task_id: str,
        status: DeviceTaskStatus | str,
        reason: str = "",
        *,
        run: int | None = None,
        quarantined_until: float | None = None,
    ) -> DeviceTaskState:
        """Record a device's status for a task and its part in the run ``run`` (``None``:
        the task's current run; a task that never ran: no part recorded); a first
        ``running`` for a run is its joining (``RunDevice.joined_at``). A ``run`` that is
        older than the current one records its part only: the device's status for the
        task is the current run's. ``NOT_FOUND`` if either id (or the run) is unknown.
        ``quarantined_until`` (epoch seconds) is kept with a ``QUARANTINED`` status only;
        any other status clears it."""

    @abc.abstractmethod
    def list_device_tasks(self, user_id: str) -> list[DeviceTaskState]:
        """The task states of one device, by task id."""

    @abc.abstractmethod
    def list_task_devices(self, task_id: str) -> list[DeviceTaskState]:
        """The device states of one task, by user id."""

    @abc.abstractmethod
    def device_task_states(
        self, user_ids: Sequence[str] | None = None
    ) -> dict[str, list[DeviceTaskState]]:
        """The task states of these devices (``None``: of every device) by user id, each
        list by task id; a device without states has no key. It MUST NOT issue a query
        per device."""

    @abc.abstractmethod
    def list_device_failures(self, limit: int = 10) -> list[DeviceTaskState]:
        """The ``limit`` newest device states that are ``FAILED`` or ``QUARANTINED``
        (of any device and task), newest first."""

    @abc.abstractmethod
    def clear_quarantine(self, user_id: str | None, task_id: str | None = None) -> int:
        """Forget the quarantine of a device (``None``: of every device) for one task or
        all; returns how many."""

    # -- events, metrics, logs -----------------------------------------------------------

    @abc.abstractmethod
    def add_event(
        self,
        *,
        service: str,
        function: str,
        event: str,
        time: float | None = None,
        task_id: str | None = None,
        user_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        run: int | None = None,
    ) -> Event:
        """Append an event (``time`` defaults to now). Ids need not exist. An event of a
        known task belongs to ``run``, or by default to the task's current run."""

    @abc.abstractmethod
    def add_events(self, events: Sequence[NewEvent]) -> list[Event]:
        """Append several events in one transaction, as :meth:`add_event` would one by
        one (same checks, same defaults), and return them in the given order. One
        value the store cannot keep refuses the whole call (``INVALID_ARGUMENT``)."""

    @abc.abstractmethod
    def list_events(
        self,
        task_id: str | None = None,
        since: float | None = None,
        limit: int = 1000,
        *,
        run: int | None = None,
    ) -> list[Event]:
        """Events (of one task, at or after ``since``), oldest first, at most ``limit``.
        With ``run`` (and ``task_id``): that run's events and the task's events of no
        run (its creation, its updates)."""

    @abc.abstractmethod
    def add_metric(
        self,
        task_id: str,
        round: int,
        source: str,
        metrics: Mapping[str, float],
        time: float | None = None,
        *,
        run: int | None = None,
    ) -> Metric:
        """Append one round's metrics to ``run`` (``None``: the task's current run) and
        make them the run's last ones (a device's only while the run has none from the
        server); a device's round becomes its part's ``last_round``. Values MUST be
        finite numbers; unknown task or run → ``NOT_FOUND``."""

    @abc.abstractmethod
    def list_metrics(self, task_id: str, *, run: int | None = None) -> list[Metric]:
        """The metrics of a task's run (``None``: its current run; before its first run:
        those of no run), by round, then arrival."""

    @abc.abstractmethod
    def add_log_lines(
        self, task_id: str, lines: Sequence[NewLogLine], *, run: int | None = None
    ) -> int:
        """Append lines to ``run`` (``None``: the current run); returns the task's last
        ``seq`` afterwards (0 if it has none; ``seq`` counts over all of its runs).

        Only the last ``log_cap`` lines of a task are kept: older ones MUST be deleted in
        the same transaction. Unknown task → ``NOT_FOUND``.
        """

    @abc.abstractmethod
    def tail_logs(
        self, task_id: str, n: int = 100, after_seq: int = 0, *, run: int | None = None
    ) -> list[LogLine]:
        """The last ``n`` lines of a run (``None``: the current one; before the first run:
        those of no run) with ``seq > after_seq``, oldest first."""

    # -- tokens --------------------------------------------------------------------------

    @abc.abstractmethod
    def add_operator_token(self, name: str, token_hash: str) -> OperatorToken:
        """Store a new operator token's hash; ``CONFLICT`` if the hash is already stored."""

    @abc.abstractmethod
    def find_operator_token_by_hash(self, token_hash: str) -> OperatorToken | None:
        """The token with this hash unless revoked, else ``None``."""

    @abc.abstractmethod
    def list_operator_tokens(self) -> list[OperatorToken]:
        """All operator tokens, revoked ones included, oldest first."""

    @abc.abstractmethod
    def revoke_operator_token(self, token_id: str) -> None:
        """Revoke a token (idempotent); ``NOT_FOUND`` if the id is unknown."""

    @abc.abstractmethod
    def add_enrollment_token(
        self, name: str, token_hash: str, *, uses: int = 1, expires_at: datetime | None = None
    ) -> EnrollmentToken:
        """Store a device enrollment token's hash, valid ``uses`` times until ``expires_at``
        (a timezone-aware datetime; ``None`` = no expiry)."""

    @abc.abstractmethod
    def consume_enrollment_token(self, token_hash: str) -> EnrollmentToken | None:
        """Use the token once: atomically decrement ``uses_left`` and return it afterwards.

        ``None`` if no such token, or it is revoked, expired or used up; concurrent
        callers MUST NOT be able to use it more often than allowed.
        """

    @abc.abstractmethod
    def list_enrollment_tokens(self) -> list[EnrollmentToken]:
        """All enrollment tokens, oldest first."""

    @abc.abstractmethod
    def revoke_enrollment_token(self, token_id: str) -> None:
        """Revoke an enrollment token (idempotent); ``NOT_FOUND`` if the id is unknown."""

    # -- lifecycle -----------------------------------------------------------------------

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. Later calls MUST fail with ``UNAVAILABLE``."""

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
