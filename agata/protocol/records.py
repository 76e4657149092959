"""The public records the operations answer: a task, a device, a device's task state.

The cloud's services build them (``agata.cloud.services.views``) and send their JSON;
the gateway publishes them as reply schemas (``/openapi.json``); the web UI and the
agents read them. Field names are the original system's where it had them (``ID``,
``creation_date``, ``last_mod_date``, ``arguments``), with AGATA's additions beside.
Unknown fields are ignored on reading, so a newer cloud may add some.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agata.protocol.bundle_files import BundleFile
from agata.protocol.fields import AttributeValue, TaskKindName

__all__ = [
    "DevicePublic",
    "DeviceTaskPublic",
    "DeviceTaskStatusName",
    "TaskPublic",
    "TaskStateName",
]

#: Where a task is: stopped (never started, or stopped by an operator), queued (its run
#: waits for a free slot, --max-running-tasks), running,
#: finished (its server side said "Finished") or failed (with ``state_reason``).
TaskStateName = Literal["stopped", "queued", "running", "finished", "failed"]
#: What a device is doing with a task, as the cloud records it.
DeviceTaskStatusName = Literal[
    "downloading", "running", "finished", "failed", "quarantined", "stopped"
]


class Record(BaseModel):
    """Base of the public records: unknown fields are ignored on reading."""

    model_config = ConfigDict(extra="ignore")


class TaskPublic(Record):
    """A registered task (``rpc_exec_get_task_by_id``; items of the task lists).

    ``arguments`` and ``server_arguments`` are the server side's arguments joined as
    shell text (``server_argv`` the list), ``client_arguments``/``client_argv`` the
    client side's. ``version`` grows by one each time the bundle files are replaced.
    ``last_round``/``last_acc`` are of the latest metric (the server side's first),
    ``devices_running`` the devices that report running it.
    """

    ID: str
    task_id: str
    host: str
    port: int
    running: bool
    state: TaskStateName
    state_reason: str
    creation_date: str = Field(description="ISO 8601 time the task was registered")
    last_mod_date: str = Field(description="ISO 8601 time of its last change")
    selection_criteria: str
    arguments: str
    server_arguments: str
    client_arguments: str
    server_argv: list[str]
    client_argv: list[str]
    limits: dict[str, int | float]
    kind: TaskKindName
    tags: list[str]
    files_paths: list[str]
    files: list[BundleFile]
    version: int
    last_round: int | None
    last_acc: float | None
    devices_running: list[str]
    run: int | None = Field(None, description="the current (or last) run; null: never started")
    run_state: str | None = Field(None, description="that run's state (agata.protocol.runs)")
    min_devices: int = 0
    start_deadline_s: float | None = None


class DeviceTaskPublic(Record):
    """What one device last reported about one task."""

    user_id: str
    task_id: str
    status: DeviceTaskStatusName
    reason: str
    updated_at: str = Field(description="ISO 8601 time of the report")


class DevicePublic(Record):
    """A device (a "user" in the original's words): its attributes, what the cloud
    knows of it (``online``: polled within the last minute; ``enrolled``: holds a
    credential; ``revoked``: its credential was revoked) and its task states."""

    user_id: str
    data_qnt: float | None
    avg_acc_contrib: float | None
    avg_disconnection_per_round: float | None
    sensors: list[str]
    extra: dict[str, AttributeValue]
    last_seen: str
    created_at: str
    online: bool
    enrolled: bool
    revoked: bool
    tasks: list[DeviceTaskPublic]
