"""Public shapes of the cloud's records (what operations return)."""

from __future__ import annotations

import shlex
import time
from datetime import datetime
from typing import Any

from agata.store.store import Device, DeviceTaskState, Task

#: A device that polled within this many seconds counts as online.
ONLINE_SECONDS = 60.0


def task_view(
    task: Task,
    *,
    last_round: int | None = None,
    last_acc: float | None = None,
    devices_running: list[str] | None = None,
) -> dict[str, Any]:
    files = [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in task.files]
    server_args = shlex.join(task.server_arguments)
    return {
        "ID": task.task_id,
        "task_id": task.task_id,
        "host": task.host,
        "port": task.port,
        "running": task.running,
        "state": str(task.state),
        "state_reason": task.state_reason,
        "creation_date": task.created_at,
        "last_mod_date": task.updated_at,
        "selection_criteria": task.selection_criteria,
        "arguments": server_args,
        "server_arguments": server_args,
        "client_arguments": shlex.join(task.client_arguments),
        "server_argv": list(task.server_arguments),
        "client_argv": list(task.client_arguments),
        "limits": dict(task.limits),
        "tags": list(task.tags),
        "files_paths": [f.name for f in task.files],
        "files": files,
        "version": task.version,
        "last_round": last_round,
        "last_acc": last_acc,
        "devices_running": devices_running or [],
    }


def offer_view(task: Task, *, legacy: bool) -> dict[str, Any]:
    """What a device gets for a compatible task."""
    offer: dict[str, Any] = {
        "ID": task.task_id,
        "host": task.host,
        "port": task.port,
        "tags": list(task.tags),
        "client_arguments": shlex.join(task.client_arguments),
        "client_argv": list(task.client_arguments),
        "files_paths": [f.name for f in task.files],
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in task.files],
        "version": task.version,
        "download_url": f"/download/{task.task_id}/",
        "limits": dict(task.limits),
    }
    if legacy:  # devices of the original system download with these
        offer["username"] = task.username
        offer["password"] = task.password
    return offer


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
    return {
        "user_id": device.user_id,
        "data_qnt": device.data_qnt,
        "avg_acc_contrib": device.avg_acc_contrib,
        "avg_disconnection_per_round": device.avg_disconnection_per_round,
        "sensors": sorted(device.sensors),
        "extra": dict(device.extra),
        "last_seen": device.last_seen,
        "created_at": device.created_at,
        "online": seconds_since(device.last_seen) <= ONLINE_SECONDS,
        "enrolled": device.credential_hash is not None,
        "tasks": [device_task_view(t) for t in tasks or []],
    }


def device_task_view(state: DeviceTaskState) -> dict[str, Any]:
    return {
        "user_id": state.user_id,
        "task_id": state.task_id,
        "status": str(state.status),
        "reason": state.reason,
        "updated_at": state.updated_at,
    }
