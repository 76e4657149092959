"""The cloud's records as the operations answer them, built with the protocol's models
(:mod:`agata.protocol.records`, :mod:`agata.protocol.offers`) so that a reply has the
shape the gateway publishes."""

from __future__ import annotations

import shlex
import time
from datetime import datetime
from typing import Any

from agata.cloud.credentials.download_passwords import device_password
from agata.protocol.arguments import expand_client_arguments, placeholder_values
from agata.protocol.offers import TaskOffer
from agata.protocol.records import DevicePublic, DeviceTaskPublic, TaskPublic
from agata.protocol.replies import EnrollmentTokenPublic, OperatorTokenPublic
from agata.protocol.runs import ArtifactRecord, RunDeviceRecord, RunRecord
from agata.store.run_store import Run, RunDevice
from agata.store.store import Device, DeviceTaskState, EnrollmentToken, OperatorToken, Task

#: A device that polled within this many seconds counts as online.
ONLINE_SECONDS = 60.0


def task_view(
    task: Task,
    *,
    last_round: int | None = None,
    last_acc: float | None = None,
    devices_running: list[str] | None = None,
    run_state: str | None = None,
) -> dict[str, Any]:
    """The task's public record (:class:`~agata.protocol.records.TaskPublic`) as JSON."""
    server_args = shlex.join(task.server_arguments)
    return TaskPublic(
        ID=task.task_id,
        task_id=task.task_id,
        host=task.host,
        port=task.port,
        running=task.running,
        state=task.state.value,
        state_reason=task.state_reason,
        creation_date=task.created_at,
        last_mod_date=task.updated_at,
        selection_criteria=task.selection_criteria,
        arguments=server_args,
        server_arguments=server_args,
        client_arguments=shlex.join(task.client_arguments),
        server_argv=list(task.server_arguments),
        client_argv=list(task.client_arguments),
        limits=dict(task.limits),
        kind=task.kind.value,
        tags=list(task.tags),
        files_paths=[f.name for f in task.files],
        files=list(task.files),
        version=task.version,
        last_round=last_round,
        last_acc=last_acc,
        devices_running=devices_running or [],
        run=task.run,
        run_state=run_state,
        min_devices=task.min_devices,
        start_deadline_s=task.start_deadline_s,
    ).model_dump(mode="json")


def run_view(run: Run, devices: list[RunDevice] | None = None) -> dict[str, Any]:
    """The run record of :mod:`agata.protocol.runs` (``devices`` only for one run)."""
    acc = run.last_metrics.get("acc", run.last_metrics.get("accuracy"))
    record = RunRecord(
        task_id=run.task_id,
        run=run.run,
        state=run.state,
        reason=run.reason,
        server_arguments=list(run.server_arguments),
        client_arguments=list(run.client_arguments),
        bundle_version=run.bundle_version,
        files=list(run.files),
        min_devices=run.min_devices,
        start_deadline_s=run.start_deadline_s,
        created_at=run.created_at,
        started_at=run.started_at,
        ended_at=run.ended_at,
        last_round=run.last_round,
        last_metrics=dict(run.last_metrics),
        last_acc=acc,
        devices_joined=run.devices_joined,
        artifacts=[
            ArtifactRecord(name=a.name, size=a.size, sha256=a.sha256, saved_at=a.saved_at)
            for a in run.artifacts
        ],
        devices=None
        if devices is None
        else [
            RunDeviceRecord(
                user_id=d.user_id,
                joined_at=d.joined_at,
                status=d.status,
                reason=d.reason,
                last_round=d.last_round,
                updated_at=d.updated_at,
            )
            for d in devices
        ],
    )
    return record.model_dump(mode="json")


def task_offer(task: Task, **legacy: str) -> TaskOffer:
    """What a device gets for a compatible task (``legacy``: the download username and
    password, and expanded client arguments, of :func:`legacy_offer_view`)."""
    fields: dict[str, Any] = {
        "task_id": task.task_id,
        "host": task.host,
        "port": task.port,
        "tags": task.tags,
        "client_arguments": shlex.join(task.client_arguments),
        "client_argv": task.client_arguments,
        "files_paths": tuple(f.name for f in task.files),
        "files": task.files,
        "version": str(task.version),
        "download_url": f"/download/{task.task_id}/",
        "run": task.run,
        "limits": dict(task.limits),
        "kind": task.kind.value,
    }
    return TaskOffer(**{**fields, **legacy})


def offer_view(task: Task) -> dict[str, Any]:
    """What a device gets for a compatible task, as JSON (see :func:`legacy_offer_view`
    for a device of the original system)."""
    return task_offer(task).to_json()


#: The number fields of a device record (the rest of its attributes are extra).
NUMBER_FIELDS = ("data_qnt", "avg_acc_contrib", "avg_disconnection_per_round")


def legacy_offer_view(task: Task, attributes: dict[str, Any]) -> dict[str, Any]:
    """What a device of the original system gets for a compatible task.

    That agent splits ``client_arguments`` on spaces and expands nothing, so they come
    expanded for this device (``attributes``: its :func:`device_attributes`), exactly as
    our agent would expand them, and joined with plain spaces (no shell quoting). An
    argument holding a space cannot reach such a device intact. ``client_argv`` stays
    unexpanded: our agent, when it runs anonymously, expands it itself. The offer
    carries the task's download username and a password made for this device
    (:func:`agata.cloud.credentials.download_passwords.device_password`), never the task's own,
    which the store does not keep. Raises
    AgataError (INVALID_ARGUMENT) when a placeholder has no value for this device.
    """
    values = placeholder_values(
        user_id=str(attributes.get("user_id", "")),
        numbers={name: attributes.get(name) for name in NUMBER_FIELDS},
        sensors=attributes.get("sensors") or (),
        extra={
            key: value
            for key, value in attributes.items()
            if key not in NUMBER_FIELDS and key not in ("user_id", "sensors")
        },
        host=task.host,
        port=task.port,
    )
    return task_offer(
        task,
        username=task.username,  # that agent downloads with exactly these
        password=device_password(task, str(attributes.get("user_id", ""))),
        client_arguments=" ".join(expand_client_arguments(task.client_arguments, values)),
    ).to_json()


def seconds_since(iso: str) -> float:
    if not iso:
        return float("inf")
    try:
        return time.time() - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")


def device_attributes(device: Device) -> dict[str, Any]:
    """The names a selection criteria expression may use."""
    return {
        **dict(device.extra),
        "user_id": device.user_id,
        "data_qnt": device.data_qnt,
        "avg_acc_contrib": device.avg_acc_contrib,
        "avg_disconnection_per_round": device.avg_disconnection_per_round,
        "sensors": sorted(device.sensors),
    }


def device_view(device: Device, tasks: list[DeviceTaskState] | None = None) -> dict[str, Any]:
    """The device's public record (:class:`~agata.protocol.records.DevicePublic`) as JSON."""
    return DevicePublic(
        user_id=device.user_id,
        data_qnt=device.data_qnt,
        avg_acc_contrib=device.avg_acc_contrib,
        avg_disconnection_per_round=device.avg_disconnection_per_round,
        sensors=sorted(device.sensors),
        extra=dict(device.extra),
        last_seen=device.last_seen,
        created_at=device.created_at,
        online=seconds_since(device.last_seen) <= ONLINE_SECONDS,
        enrolled=device.credential_hash is not None,
        revoked=device.revoked_at is not None,
        tasks=[_device_task(t) for t in tasks or []],
    ).model_dump(mode="json")


def _device_task(state: DeviceTaskState) -> DeviceTaskPublic:
    return DeviceTaskPublic(
        user_id=state.user_id,
        task_id=state.task_id,
        status=state.status.value,
        reason=state.reason,
        updated_at=state.updated_at,
        quarantined_until=state.quarantined_until,
    )


def device_task_view(state: DeviceTaskState) -> dict[str, Any]:
    """A device's state of one task (:class:`~agata.protocol.records.DeviceTaskPublic`)."""
    return _device_task(state).model_dump(mode="json")


def operator_token_view(token: OperatorToken) -> dict[str, Any]:
    """An operator token as listed (:class:`~agata.protocol.replies.OperatorTokenPublic`):
    never the token or its hash."""
    return OperatorTokenPublic(
        token_id=token.token_id,
        name=token.name,
        created_at=token.created_at,
        revoked=token.revoked,
    ).model_dump(mode="json")


def enrollment_token_view(token: EnrollmentToken) -> dict[str, Any]:
    """An enrollment token as listed
    (:class:`~agata.protocol.replies.EnrollmentTokenPublic`): never the token or its hash."""
    return EnrollmentTokenPublic(
        token_id=token.token_id,
        name=token.name,
        created_at=token.created_at,
        expires_at=token.expires_at,
        uses_left=token.uses_left,
        revoked=token.revoked,
    ).model_dump(mode="json")
