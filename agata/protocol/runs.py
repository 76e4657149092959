"""The run record: what one start of a task is, as operations return it.

Each ``rpc_exec_start_server_task`` makes a run, numbered per task from 1. A run keeps
the arguments and bundle version it started with, its own metrics, log lines, events,
device participation and artifacts, and its outcome. The task record's ``running``,
``state``, ``last_round``, ``last_acc`` and ``devices_running`` describe the task's current
(or last) run.

These models are the one definition of the shapes ``rpc_exec_list_runs`` and
``rpc_exec_get_run`` answer with (docs/http-api.md, "Runs"); the cloud builds them, the
operator CLI and the web console read them.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from agata.protocol.bundle_files import BundleFile

__all__ = [
    "ArtifactRecord",
    "RunDeviceRecord",
    "RunRecord",
    "RunState",
]


class RunState(StrEnum):
    """Where a run is.

    ``queued``: the cloud's cap of running runs (``--max-running-tasks``) is reached;
    it starts, in start order, when a running one ends. ``waiting``: its server side
    runs and devices are offered the task, but fewer than ``min_devices`` have joined.
    ``running``, then one of the ends: ``finished`` (the server side said "Finished"),
    ``failed`` (it failed, or the start deadline passed), ``stopped`` (by the operator,
    or the cloud restarted under it).
    """

    QUEUED = "queued"
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def active(self) -> bool:
        """True while the run has not ended (queued, waiting or running)."""
        return self in (RunState.QUEUED, RunState.WAITING, RunState.RUNNING)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArtifactRecord(_Record):
    """A file a run saved (``TaskReporter.save_artifact``), kept by the cloud; download
    it from ``GET /api/tasks/{task_id}/runs/{run}/artifacts/{name}``."""

    name: str
    size: int
    sha256: str
    saved_at: str = Field(description="ISO-8601 UTC")


class RunDeviceRecord(_Record):
    """How one device took part in a run: when it joined (first reported ``running``
    for it; null: not yet, e.g. still downloading), its last status and reason, and the
    last round it reported metrics for."""

    user_id: str
    joined_at: str | None = Field(description="ISO-8601 UTC")
    status: str = Field(description="downloading/running/finished/failed/quarantined/stopped")
    reason: str = ""
    last_round: int | None = None
    updated_at: str = Field(description="ISO-8601 UTC")


class RunRecord(_Record):
    """One run of a task. ``devices`` is filled by ``rpc_exec_get_run`` only (``None``
    in ``rpc_exec_list_runs``); ``devices_joined`` counts them in both."""

    task_id: str
    run: int = Field(ge=1)
    state: RunState
    reason: str = ""
    server_arguments: list[str] = Field(description="as the server side got them (expanded)")
    client_arguments: list[str] = Field(description="as offered to devices")
    bundle_version: int
    files: list[BundleFile]
    min_devices: int = 0
    start_deadline_s: float | None = None
    created_at: str = Field(description="when the start was asked for (ISO-8601 UTC)")
    started_at: str | None = Field(description="when the server side started; null: queued")
    ended_at: str | None = Field(description="null while queued, waiting or running")
    last_round: int | None = None
    last_metrics: dict[str, float] = Field(default_factory=dict)
    last_acc: float | None = None
    devices_joined: int = 0
    artifacts: list[ArtifactRecord] = Field(default_factory=list)
    devices: list[RunDeviceRecord] | None = None
