"""The cloud side of a simulation: tasks with selection criteria, an enrollment token.

Everything goes through the gateway's HTTP API as an operator would do it: create each
task, upload its bundle (written into a temporary folder first), start it. The bundle's
server side reports ``Started`` and waits until it is stopped; its client side is never
run (simulated devices only pretend to).

The criteria split the fleet of :func:`~agata.simulate.device.fleet_attributes`: the
first task is for every device, the others need more and more data and one sensor each
(about 40 %, 30 %, 20 %, … of the devices).
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agata.cloud.criteria.criteria_language import compile_criteria
from agata.errors import AgataError, ErrorCode
from agata.protocol.operations import (
    CREATE_ENROLLMENT_TOKEN,
    CREATE_TASK,
    DELETE_TASK,
    START_TASK,
    STOP_TASK,
)
from agata.simulate.device import SENSORS, DeviceAttributes

__all__ = [
    "CLIENT_PY",
    "SERVER_PY",
    "FleetTask",
    "create_enrollment_token",
    "expected_tasks",
    "set_up_tasks",
    "task_criteria",
    "tear_down_tasks",
]

SERVER_PY = """\
# Server side of a simulation task: reports Started, then waits until stopped.
import signal
import sys
import time

from agata.runtime import TaskReporter

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
TaskReporter()
while True:
    time.sleep(3600)
"""

CLIENT_PY = """\
# Client side of a simulation task (simulated devices never run it).
from agata.runtime import TaskReporter

reporter = TaskReporter()
reporter.send_metrics(1, acc=0.5, loss=0.5)
reporter.finished()
"""


@dataclass(frozen=True)
class FleetTask:
    task_id: str
    selection_criteria: str


def task_criteria(index: int) -> str:
    """The selection criteria of the ``index``-th simulation task."""
    if index == 0:
        return ""
    sensor = SENSORS[(index - 1) % len(SENSORS)]
    threshold = (index * 40) % 160
    return f'(data_qnt > {threshold}) and ("{sensor}" in sensors)'


def expected_tasks(tasks: list[FleetTask]) -> Callable[[DeviceAttributes], set[str]]:
    """A function giving the ids of the tasks whose criteria a device meets (as the
    cloud decides; each expression compiled once)."""
    compiled = [(t.task_id, compile_criteria(t.selection_criteria)) for t in tasks]

    def of(attributes: DeviceAttributes) -> set[str]:
        record = attributes.record()
        return {task_id for task_id, criteria in compiled if criteria.matches(record)}

    return of


async def _post(http: httpx.AsyncClient, what: str, path: str, **kwargs: Any) -> httpx.Response:
    """POST as the operator; anything but 200 (or no answer) is an :class:`AgataError`
    saying what failed (a 401 here: the operator token is wrong)."""
    try:
        response = await http.post(path, **kwargs)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise AgataError(
            ErrorCode.UNAVAILABLE, f"simulation setup: {what} failed: {reason}"
        ) from None
    if response.status_code != 200:
        raise AgataError(
            ErrorCode.UNAVAILABLE if response.status_code >= 500 else response.status_code,
            f"simulation setup: {what} failed: HTTP {response.status_code} {response.text[:300]}",
        )
    return response


async def set_up_tasks(http: httpx.AsyncClient, count: int) -> list[FleetTask]:
    """Create, upload and start ``count`` tasks; ``http`` carries an operator token.
    When one step fails, the tasks created so far are removed and the error raised."""
    run = secrets.token_hex(3)
    tasks = [FleetTask(f"sim-{run}-{i:02d}", task_criteria(i)) for i in range(count)]
    created: list[FleetTask] = []
    with tempfile.TemporaryDirectory(prefix="agata-sim-bundle-") as folder:
        bundle = Path(folder)
        (bundle / "server.py").write_text(SERVER_PY)
        (bundle / "client.py").write_text(CLIENT_PY)
        names = ("server.py", "client.py")
        try:
            for i, task in enumerate(tasks):
                body = {
                    "task_id": task.task_id,
                    "host": "127.0.0.1",
                    "port": 28000 + i,
                    "username": f"sim-{run}",
                    "password": secrets.token_urlsafe(12),
                    "files_paths": list(names),
                    "selection_criteria": task.selection_criteria,
                    "tags": ["simulation"],
                }
                await _post(http, f"creating {task.task_id}", f"/{CREATE_TASK}", json=body)
                created.append(task)
                files = [("files", (name, (bundle / name).read_bytes())) for name in names]
                await _post(
                    http,
                    f"uploading the bundle of {task.task_id}",
                    f"/api/tasks/{task.task_id}/files",
                    files=files,
                )
                await _post(
                    http,
                    f"starting {task.task_id}",
                    f"/{START_TASK}",
                    json={"task_id": task.task_id},
                )
        except BaseException:
            await tear_down_tasks(http, created)
            raise
    return tasks


async def create_enrollment_token(http: httpx.AsyncClient, uses: int) -> str:
    """An enrollment token good for ``uses`` devices (an hour)."""
    body = {"uses": uses, "ttl_seconds": 3600}
    response = await _post(
        http, "creating an enrollment token", f"/{CREATE_ENROLLMENT_TOKEN}", json=body
    )
    token: str = response.json()["enrollment_token"]
    return token


async def tear_down_tasks(http: httpx.AsyncClient, tasks: list[FleetTask]) -> None:
    """Stop and delete the simulation's tasks (errors ignored: best effort)."""
    for task in tasks:
        try:
            await http.post(f"/{STOP_TASK}", json={"task_id": task.task_id})
            await http.post(f"/{DELETE_TASK}", json={"task_id": task.task_id})
        except httpx.HTTPError:
            pass
