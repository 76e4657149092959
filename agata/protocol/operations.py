"""Operation names and their request models.

The ``rpc_exec_*`` operations are the original system's contract (DESIGN.md); the
others are added in the same style. Each name is also the AMQP queue that serves it
and the HTTP path at the gateway (``POST /<name>``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from agata.errors import AgataError
from agata.protocol.bundle_files import BundleFile
from agata.protocol.bundle_names import check_listed_name
from agata.protocol.fields import (
    INT32_MAX,
    JSON_INT_MAX,
    Arguments,
    AttributeName,
    AttributeValue,
    Criteria,
    Host,
    MetricName,
    MetricValue,
    NoNul,
    OwnDeviceId,
    SensorName,
    ShortText,
    Tags,
    TaskKindName,
)
from agata.protocol.fields import TASK_ID_PATTERN as TASK_ID_PATTERN
from agata.protocol.fields import DeviceId as DeviceId
from agata.protocol.fields import TaskId as TaskId
from agata.protocol.notifications import NOTIFICATIONS_TOPIC as NOTIFICATIONS_TOPIC


class Request(BaseModel):
    """Base of every request: unknown fields are refused, like the original schemas."""

    model_config = ConfigDict(extra="forbid", str_max_length=4096)


# -- task manager ----------------------------------------------------------------

CREATE_TASK = "rpc_exec_create_task"
UPDATE_TASK = "rpc_exec_update_task"
GET_TASK = "rpc_exec_get_task_by_id"
START_TASK = "rpc_exec_start_server_task"
STOP_TASK = "rpc_exec_stop_server_task"
CLIENT_REQUESTING_TASK = "rpc_exec_client_requesting_task"
LIST_TASKS = "rpc_exec_list_tasks"
QUERY_TASKS = "rpc_exec_query_tasks"
DELETE_TASK = "rpc_exec_delete_task"
SET_TASK_FILES = "rpc_exec_set_task_files"
GET_TASK_METRICS = "rpc_exec_get_task_metrics"
GET_TASK_LOGS = "rpc_exec_get_task_logs"
GET_TASK_EVENTS = "rpc_exec_get_task_events"
GET_TASK_DEVICES = "rpc_exec_get_task_devices"
VALIDATE_CRITERIA = "rpc_exec_validate_criteria"
GET_OVERVIEW = "rpc_exec_get_overview"
CHECK_DOWNLOAD_PASSWORD = "rpc_exec_check_download_password"
LIST_RUNS = "rpc_exec_list_runs"
GET_RUN = "rpc_exec_get_run"

#: A run's number: a positive integer (the store keeps ``INTEGER``).
RunNumber = Annotated[int, Field(ge=1, le=INT32_MAX)]
#: Longest a run may wait for its ``min_devices`` (a year).
MAX_START_DEADLINE_S = 366 * 86400.0


class TaskLimits(Request):
    """Limits of a task's processes (each side's process tree); absent: the cloud's or
    the device's configured default (``docs/runtime.md``, Limits)."""

    memory_mb: int | None = Field(default=None, ge=1, le=1 << 30)
    cpu_cores: float | None = Field(default=None, ge=0.01, le=4096)
    open_files: int | None = Field(default=None, ge=16, le=1 << 20)
    pids: int | None = Field(default=None, ge=1, le=1 << 22)
    wall_seconds: float | None = Field(default=None, ge=0.1, le=366 * 86400)


class CreateTask(Request):
    task_id: TaskId
    host: Host
    port: int = Field(ge=1, le=65535)
    username: ShortText = ""
    password: ShortText = ""
    files_paths: list[ShortText] = Field(default_factory=list, max_length=256)
    selection_criteria: Criteria | None = None
    server_arguments: Arguments | None = None
    client_arguments: Arguments | None = None
    tags: Tags | None = None
    limits: TaskLimits | None = None
    min_devices: int = Field(0, ge=0, le=1_000_000)
    start_deadline_s: float | None = Field(default=None, gt=0, le=MAX_START_DEADLINE_S)
    kind: TaskKindName = "script"


class UpdateTask(Request):
    task_id: TaskId
    host: Host | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    selection_criteria: Criteria | None = None
    server_arguments: Arguments | None = None
    client_arguments: Arguments | None = None
    username: ShortText | None = None
    password: ShortText | None = None
    tags: Tags | None = None
    limits: TaskLimits | None = None
    min_devices: int | None = Field(default=None, ge=0, le=1_000_000)
    #: ``0`` clears it (no deadline: a run waits for its devices as long as it takes).
    start_deadline_s: float | None = Field(default=None, ge=0, le=MAX_START_DEADLINE_S)
    kind: TaskKindName | None = None


class TaskRef(Request):
    task_id: TaskId


class StartTask(Request):
    task_id: TaskId
    arguments: Arguments | None = None


class ListTasks(Request):
    running: bool | None = None


#: Most items one page of a query returns.
MAX_PAGE = 500
#: The filter text of a query (terms or a selection criteria expression).
FilterText = Annotated[str, StringConstraints(max_length=2000), NoNul()]


class QueryTasks(Request):
    """One page of tasks: ``q`` (blank-separated terms, all must hold) is a part of the
    id, a state (``running queued stopped finished failed``) or ``tag:NAME``; sorted by
    ``sort`` (``task_id created_at updated_at state``) in ``order``. Answers
    ``{"items": [task, ...], "total": N}``."""

    limit: int = Field(50, ge=1, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=JSON_INT_MAX)
    sort: Literal["task_id", "created_at", "updated_at", "state"] = "created_at"
    order: Literal["asc", "desc"] = "asc"
    q: FilterText = ""


class SetTaskFiles(Request):
    """Record a task's bundle listing; every name must pass the bundle name rule
    (:mod:`agata.protocol.bundle_names`) and be listed once."""

    task_id: TaskId
    files: list[BundleFile] = Field(max_length=256)

    @field_validator("files")
    @classmethod
    def _names_allowed_and_unique(cls, files: list[BundleFile]) -> list[BundleFile]:
        seen: set[str] = set()
        for item in files:
            try:
                check_listed_name(item.name)
            except AgataError as exc:
                # The reason names the file: "file name '../x' contains '/'".
                raise PydanticCustomError(
                    "file_name", "{reason}", {"reason": exc.message}
                ) from None
            if item.name in seen:
                raise PydanticCustomError(
                    "duplicate_file", "file {name} is listed twice", {"name": repr(item.name)}
                )
            seen.add(item.name)
        return files


class ListRuns(Request):
    """A task's runs, newest first: at most ``limit``, numbered below ``before`` when
    given (the next page: ``before`` = the last run number of this one)."""

    task_id: TaskId
    limit: int = Field(50, ge=1, le=1000)
    before: RunNumber | None = None


class RunRef(Request):
    """One run of a task; unknown task or run: 404."""

    task_id: TaskId
    run: RunNumber


class TaskMetricsQuery(Request):
    """A run's metrics (``run`` absent: the current or last run)."""

    task_id: TaskId
    run: RunNumber | None = None


class TaskLogsQuery(Request):
    """The last ``limit`` log lines of a run (``run`` absent: the current or last run)."""

    task_id: TaskId
    limit: int = Field(200, ge=1, le=5000)
    run: RunNumber | None = None


class TaskEventsQuery(Request):
    """Events, of a task when ``task_id`` is given: of its run ``run`` (absent: the
    current or last run, with the task's events that belong to no run)."""

    task_id: TaskId | None = None
    since: float | None = None
    limit: int = Field(500, ge=1, le=5000)
    run: RunNumber | None = None


class ValidateCriteria(Request):
    selection_criteria: Criteria


class CheckDownloadPassword(Request):
    task_id: TaskId
    username: ShortText
    password: ShortText


class Empty(Request):
    pass


# -- device registry ---------------------------------------------------------------

UPDATE_USER_INFO = "rpc_exec_update_user_info"
GET_USER_INFO = "rpc_exec_get_user_info"
LIST_DEVICES = "rpc_exec_list_devices"
REPORT_DEVICE_TASK = "rpc_exec_report_device_task"
CLEAR_QUARANTINE = "rpc_exec_clear_quarantine"
ENROLL_DEVICE = "rpc_exec_enroll_device"
CREATE_ENROLLMENT_TOKEN = "rpc_exec_create_enrollment_token"
RESOLVE_CREDENTIAL = "rpc_exec_resolve_credential"
REVOKE_DEVICE = "rpc_exec_revoke_device"
QUERY_DEVICES = "rpc_exec_query_devices"
DELETE_DEVICE = "rpc_exec_delete_device"
LIST_OPERATOR_TOKENS = "rpc_exec_list_operator_tokens"
REVOKE_OPERATOR_TOKEN = "rpc_exec_revoke_operator_token"
LIST_ENROLLMENT_TOKENS = "rpc_exec_list_enrollment_tokens"
REVOKE_ENROLLMENT_TOKEN = "rpc_exec_revoke_enrollment_token"


class ClientRequestingTask(Request):
    """The running tasks whose selection criteria this device meets.

    ``legacy``: the offers are for a device of the original system, which gets the
    task's download username/password and its client arguments already expanded for
    it — only while the cloud runs with ``--legacy-devices``. The HTTP gateway sets it
    True for a call without a credential and keeps a caller's own True (the edge
    gateway asks so for the original agent behind it); anything else is False there. A
    caller on the bus that leaves it out is taken for such a device.
    """

    # The original's code sent ``client_id``; DESIGN.md names it ``user_id``.
    user_id: DeviceId = Field(validation_alias=AliasChoices("user_id", "client_id"))
    legacy: bool | None = None


class UpdateUserInfo(Request):
    user_id: OwnDeviceId
    data_qnt: float | None = None
    avg_acc_contrib: float | None = None
    avg_disconnection_per_round: float | None = None
    sensors: list[SensorName] | None = Field(default=None, max_length=128)
    extra: dict[AttributeName, AttributeValue] | None = Field(default=None, max_length=64)


class UserRef(Request):
    user_id: DeviceId


class QueryDevices(Request):
    """One page of devices matching ``q`` (terms or a selection criteria expression, see
    docs/http-api.md), sorted by ``sort`` in ``order`` (ties by id). Answers
    ``{"items": [device, ...], "total": N}``; a filter matching nothing: no items, 0."""

    limit: int = Field(50, ge=1, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=JSON_INT_MAX)
    sort: Literal[
        "user_id",
        "data_qnt",
        "avg_acc_contrib",
        "avg_disconnection_per_round",
        "last_seen",
        "created_at",
    ] = "user_id"
    order: Literal["asc", "desc"] = "asc"
    q: FilterText = ""


class ReportDeviceTask(Request):
    """A device tells the cloud what happened to one of its tasks."""

    user_id: OwnDeviceId
    task_id: TaskId
    status: Annotated[
        str,
        StringConstraints(
            pattern=r"^(downloading|downloaded|running|finished|failed|quarantined|stopped)$"
        ),
    ]
    reason: Annotated[str, StringConstraints(max_length=2000), NoNul()] = ""
    round: int | None = Field(default=None, ge=0, le=INT32_MAX)
    metrics: dict[MetricName, MetricValue] | None = Field(default=None, max_length=32)
    #: The run the report is about (the offer's ``run``); absent: the task's current run.
    #: A report about an older run than the current one is recorded in that run only.
    run: RunNumber | None = None


class ClearQuarantine(Request):
    user_id: DeviceId
    task_id: TaskId | None = None


class EnrollDevice(Request):
    user_id: OwnDeviceId
    enrollment_token: Annotated[str, StringConstraints(min_length=8, max_length=256), NoNul()]


class CreateEnrollmentToken(Request):
    uses: int = Field(1, ge=1, le=100_000)
    ttl_seconds: float = Field(86_400.0, gt=0, le=365 * 86_400)


class TokenRef(Request):
    """An operator or enrollment token by its id (as listed; never the token itself)."""

    token_id: Annotated[str, StringConstraints(min_length=1, max_length=64), NoNul()]


class ResolveCredential(Request):
    token_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


# -- the table: operation name -> request model ----------------------------------------

#: Every operation and the model of its request; services and the gateway both use it.
OPERATION_MODELS: dict[str, type[Request]] = {
    CREATE_TASK: CreateTask,
    UPDATE_TASK: UpdateTask,
    GET_TASK: TaskRef,
    LIST_TASKS: ListTasks,
    QUERY_TASKS: QueryTasks,
    DELETE_TASK: TaskRef,
    START_TASK: StartTask,
    STOP_TASK: TaskRef,
    SET_TASK_FILES: SetTaskFiles,
    CLIENT_REQUESTING_TASK: ClientRequestingTask,
    GET_TASK_METRICS: TaskMetricsQuery,
    GET_TASK_LOGS: TaskLogsQuery,
    GET_TASK_EVENTS: TaskEventsQuery,
    GET_TASK_DEVICES: TaskRef,
    VALIDATE_CRITERIA: ValidateCriteria,
    GET_OVERVIEW: Empty,
    CHECK_DOWNLOAD_PASSWORD: CheckDownloadPassword,
    LIST_RUNS: ListRuns,
    GET_RUN: RunRef,
    UPDATE_USER_INFO: UpdateUserInfo,
    GET_USER_INFO: UserRef,
    LIST_DEVICES: Empty,
    REPORT_DEVICE_TASK: ReportDeviceTask,
    CLEAR_QUARANTINE: ClearQuarantine,
    ENROLL_DEVICE: EnrollDevice,
    CREATE_ENROLLMENT_TOKEN: CreateEnrollmentToken,
    RESOLVE_CREDENTIAL: ResolveCredential,
    REVOKE_DEVICE: UserRef,
    QUERY_DEVICES: QueryDevices,
    DELETE_DEVICE: UserRef,
    LIST_OPERATOR_TOKENS: Empty,
    REVOKE_OPERATOR_TOKEN: TokenRef,
    LIST_ENROLLMENT_TOKENS: Empty,
    REVOKE_ENROLLMENT_TOKEN: TokenRef,
}
