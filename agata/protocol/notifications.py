"""Notifications: what the cloud broadcasts on :data:`NOTIFICATIONS_TOPIC`, one meaning
per kind.

Every service and gateway subscribes (``Bus.subscribe``); the gateway passes them on
as server-sent events (the kind names the event, the other fields are its data: the
web UI's ``/api/stream``, a device's push stream). A notification is a JSON object
whose ``kind`` selects one of the models below (:data:`Notification`, a discriminated
union); :func:`encode_notification` writes one, :func:`parse_notification` reads one.

- ``task``: a task changed (created, updated, started, stopped, ended, deleted, its
  bundle replaced) — every cache of tasks and offers is stale;
- ``stop_task``: stop this task's server side, on whichever replica runs it;
- ``device``: a device's record changed (its attributes, or it was deleted, or its
  credential revoked) — its cached attributes, offers and download grants are stale;
- ``device_task``: a device reported on one of its tasks (progress, an end) — its
  record is unchanged;
- ``operator_token``: an operator token was revoked;
- ``metric``, ``log``, ``event``: a task's metrics, log line, or an event were recorded;
- ``artifact``: a run saved an artifact;
- ``quarantine_cleared``: a device may run a task (or every task) again.

Only the fields a producer gives are sent (``None`` included when given), so the data
of each event is what it was before these models existed. Fields a newer cloud adds
are kept; a kind this version does not know is ignored by its readers.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, get_args

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

__all__ = [
    "NOTIFICATIONS_TOPIC",
    "NOTIFICATION_KINDS",
    "ArtifactSaved",
    "DeviceChanged",
    "DeviceTaskReported",
    "EventRecorded",
    "LogAppended",
    "MetricRecorded",
    "Notification",
    "OperatorTokenRevoked",
    "QuarantineCleared",
    "TaskChanged",
    "TaskStopRequested",
    "encode_notification",
    "notification_data",
    "parse_notification",
]

logger = logging.getLogger(__name__)

#: Topic on which the cloud announces changes (task started/stopped, metrics, events).
NOTIFICATIONS_TOPIC = "agata.notifications"


class _Notification(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class TaskChanged(_Notification):
    """A task changed; ``deleted`` when it is gone, ``reason`` when its run ended."""

    kind: Literal["task"] = "task"
    task_id: str
    running: bool | None = None
    state: str | None = None
    version: int | None = None
    deleted: bool | None = None
    reason: str | None = None
    run: int | None = None  # the task's current run (agata.protocol.runs)
    run_state: str | None = None  # that run's state: queued, waiting, running, …


class TaskStopRequested(_Notification):
    """Stop the server side of ``task_id`` (the replica that runs it does)."""

    kind: Literal["stop_task"] = "stop_task"
    task_id: str


class DeviceChanged(_Notification):
    """A device's record changed: updated, ``deleted``, or its credential ``revoked``."""

    kind: Literal["device"] = "device"
    user_id: str
    deleted: bool | None = None
    revoked: bool | None = None


class DeviceTaskReported(_Notification):
    """A device reported ``status`` (and ``reason``) of one of its tasks."""

    kind: Literal["device_task"] = "device_task"
    user_id: str
    task_id: str
    status: str
    reason: str = ""


class OperatorTokenRevoked(_Notification):
    kind: Literal["operator_token"] = "operator_token"
    token_id: str
    revoked: bool = True


class MetricRecorded(_Notification):
    """Metrics of a round from ``source`` (``server`` or a device id)."""

    kind: Literal["metric"] = "metric"
    task_id: str
    round: int | None = None
    source: str
    metrics: dict[str, float]
    time: float | None = None
    run: int | None = None


class LogAppended(_Notification):
    """A log line of a task's server side."""

    kind: Literal["log"] = "log"
    task_id: str
    source: str
    stream: str
    text: str
    time: float
    run: int | None = None


class EventRecorded(_Notification):
    """An event was recorded (the original's four fields and what it concerns)."""

    kind: Literal["event"] = "event"
    time: float
    service: str
    function: str
    event: str
    task_id: str | None = None
    user_id: str | None = None
    run: int | None = None


class ArtifactSaved(_Notification):
    """Run ``run`` of ``task_id`` saved the artifact ``name`` (``size`` bytes)."""

    kind: Literal["artifact"] = "artifact"
    task_id: str
    run: int
    name: str
    size: int


class QuarantineCleared(_Notification):
    """``user_id`` may run ``task_id`` again (None: every task)."""

    kind: Literal["quarantine_cleared"] = "quarantine_cleared"
    user_id: str
    task_id: str | None = None


Notification = Annotated[
    TaskChanged
    | TaskStopRequested
    | DeviceChanged
    | DeviceTaskReported
    | OperatorTokenRevoked
    | MetricRecorded
    | LogAppended
    | EventRecorded
    | ArtifactSaved
    | QuarantineCleared,
    Field(discriminator="kind"),
]
_NOTIFICATION: TypeAdapter[Notification] = TypeAdapter(Notification)


def notification_data(notification: Notification) -> dict[str, Any]:
    """The fields of ``notification`` but its kind, as its producer gave them (JSON types)."""
    return notification.model_dump(mode="json", exclude_unset=True, exclude={"kind"})


def encode_notification(notification: Notification) -> bytes:
    """The JSON body of ``notification``: ``{"kind": ..., **its fields}``."""
    body = {"kind": notification.kind, **notification_data(notification)}
    return pydantic_core.to_json(body, inf_nan_mode="constants")


def parse_notification(body: bytes) -> Notification | None:
    """The notification ``body`` holds; None (logged at debug) for one that is not JSON,
    of an unknown kind or not of its kind's shape."""
    try:
        return _NOTIFICATION.validate_json(body)
    except ValidationError as exc:
        logger.debug("notification ignored (%s): %.200r", exc.errors()[0]["msg"], body)
        return None


#: Every kind, in the order of :data:`Notification`.
NOTIFICATION_KINDS: tuple[str, ...] = tuple(
    str(member.model_fields["kind"].default) for member in get_args(get_args(Notification)[0])
)
