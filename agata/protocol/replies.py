"""What each operation answers: the reply models and the table operation -> reply.

:data:`OPERATION_REPLIES` is to replies what ``OPERATION_MODELS`` is to requests: the
gateway declares it as each route's ``response_model`` (so ``/openapi.json`` describes
every reply), and tests check real replies against it. ``None`` means the reply is
JSON ``null``. Records of tasks and devices are in :mod:`agata.protocol.records`, the
offer in :mod:`agata.protocol.offers`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agata.protocol import operations as ops
from agata.protocol.offers import TaskOffer
from agata.protocol.records import DevicePublic, DeviceTaskPublic, Record, TaskPublic
from agata.protocol.runs import RunRecord

__all__ = [
    "OPERATION_REPLIES",
    "CriteriaCheck",
    "DevicePage",
    "EnrollmentTokenCreated",
    "EnrollmentTokenPublic",
    "EventPublic",
    "Health",
    "LogLinePublic",
    "MetricPublic",
    "OperatorTokenPublic",
    "Overview",
    "TaskDevices",
    "TaskPage",
]


class TaskPage(Record):
    """One page of ``rpc_exec_query_tasks`` and how many tasks match in all."""

    items: list[TaskPublic]
    total: int


class DevicePage(Record):
    """One page of ``rpc_exec_query_devices`` and how many devices match in all."""

    items: list[DevicePublic]
    total: int


class MetricPublic(Record):
    """Metrics of one round from one source (``server`` or a device id)."""

    round: int
    source: str
    metrics: dict[str, float]
    time: float = Field(description="epoch seconds")
    run: int | None = Field(None, description="the run of the task it belongs to")


class LogLinePublic(Record):
    """A log line of a task (``stream``: stdout, stderr or the reporter's ``print``)."""

    seq: int
    source: str
    stream: str
    text: str
    time: float = Field(description="epoch seconds")
    run: int | None = Field(None, description="the run of the task it belongs to")


class EventPublic(BaseModel):
    """A recorded event (the original's four fields, what it concerns, and any data
    recorded with it as further fields)."""

    model_config = ConfigDict(extra="allow")

    time: float = Field(description="epoch seconds")
    service: str
    function: str
    event: str
    task_id: str | None
    user_id: str | None
    run: int | None = Field(None, description="the run of its task it happened in")


class TaskDevices(Record):
    """Devices matching a task's selection criteria now, and those that reported on it."""

    matching: list[str]
    states: list[DeviceTaskPublic]


class CriteriaCheck(Record):
    """Whether selection criteria are valid (else ``error``), names no device has,
    comparisons that cannot match by type, and how many devices match now."""

    valid: bool
    error: str
    unknown_names: list[str]
    type_mismatches: list[str]
    matching: int
    matching_online: int
    devices: int


class Failure(Record):
    task_id: str
    reason: str
    time: str = Field(description="ISO 8601 time the task failed")


class Overview(Record):
    """Counts of devices and tasks, the latest failures and how tasks are contained."""

    devices_total: int
    devices_online: int
    devices_offline: int
    tasks_total: int
    tasks_running: int
    recent_failures: list[Failure]
    containment: str


class PasswordCheck(Record):
    ok: bool


class QuarantinesCleared(Record):
    cleared: int = Field(description="how many quarantines ended")


class DeviceEnrolled(Record):
    """The device's own credential: shown this once, stored only hashed."""

    user_id: str
    credential: str


class EnrollmentTokenCreated(Record):
    """A new enrollment token: shown this once, stored only hashed."""

    enrollment_token: str
    uses: int
    expires_at: str | None = Field(description="ISO 8601 time")


class CredentialHolder(Record):
    """Who holds a token (gateway only): an operator (name, token id) or a device."""

    kind: Literal["operator", "device"]
    name: str | None = None
    token_id: str | None = None
    user_id: str | None = None


class DeviceRevoked(Record):
    user_id: str
    revoked: bool = Field(description="whether it held a credential")


class DeviceDeleted(Record):
    user_id: str


class TokenRevoked(Record):
    token_id: str


class OperatorTokenPublic(Record):
    """An operator token as listed: never the token or its hash."""

    token_id: str
    name: str
    created_at: str
    revoked: bool


class EnrollmentTokenPublic(Record):
    token_id: str
    name: str
    created_at: str
    expires_at: str | None
    uses_left: int
    revoked: bool


class Health(Record):
    status: Literal["ok"]
    version: str


#: Every operation and what it answers (``None``: JSON null).
OPERATION_REPLIES: dict[str, Any] = {
    ops.CREATE_TASK: None,
    ops.UPDATE_TASK: None,
    ops.GET_TASK: TaskPublic,
    ops.LIST_TASKS: list[TaskPublic],
    ops.QUERY_TASKS: TaskPage,
    ops.DELETE_TASK: None,
    ops.START_TASK: None,
    ops.STOP_TASK: None,
    ops.SET_TASK_FILES: None,
    ops.CLIENT_REQUESTING_TASK: list[TaskOffer],
    ops.GET_TASK_METRICS: list[MetricPublic],
    ops.GET_TASK_LOGS: list[LogLinePublic],
    ops.GET_TASK_EVENTS: list[EventPublic],
    ops.GET_TASK_DEVICES: TaskDevices,
    ops.VALIDATE_CRITERIA: CriteriaCheck,
    ops.GET_OVERVIEW: Overview,
    ops.CHECK_DOWNLOAD_PASSWORD: PasswordCheck,
    ops.UPDATE_USER_INFO: None,
    ops.GET_USER_INFO: DevicePublic,
    ops.LIST_DEVICES: list[DevicePublic],
    ops.REPORT_DEVICE_TASK: None,
    ops.CLEAR_QUARANTINE: QuarantinesCleared,
    ops.ENROLL_DEVICE: DeviceEnrolled,
    ops.CREATE_ENROLLMENT_TOKEN: EnrollmentTokenCreated,
    ops.RESOLVE_CREDENTIAL: CredentialHolder,
    ops.REVOKE_DEVICE: DeviceRevoked,
    ops.QUERY_DEVICES: DevicePage,
    ops.DELETE_DEVICE: DeviceDeleted,
    ops.LIST_OPERATOR_TOKENS: list[OperatorTokenPublic],
    ops.REVOKE_OPERATOR_TOKEN: TokenRevoked,
    ops.LIST_ENROLLMENT_TOKENS: list[EnrollmentTokenPublic],
    ops.REVOKE_ENROLLMENT_TOKEN: TokenRevoked,
    ops.LIST_RUNS: list[RunRecord],
    ops.GET_RUN: RunRecord,
}
