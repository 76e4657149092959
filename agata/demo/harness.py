"""The pieces of one experiment run, all on this machine: a cloud, an operator talking to
it over the real HTTP API, an edge agent, a hand-started second Flower client, and the
event log they all write to.

The cloud and the agent run in this process (on ``memory://`` by default, or the given
bus and database); every task side is a process of its own, stopped by whoever started
it. :meth:`Lab.close` stops everything, in order, whatever happened before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agata.cloud.cloud_node import CloudNode
from agata.cloud.credentials.tokens import OPERATOR_PREFIX, hash_token, new_token
from agata.demo.timings import AGENT, OPERATOR, SECOND_CLIENT
from agata.edge.agent import Agent
from agata.edge.credential import enroll_device
from agata.edge.device_info import DeviceInfo
from agata.errors import AgataError, ErrorCode
from agata.resources import example_path
from agata.runtime.messages import Error, Info, Model, TaskMessage
from agata.runtime.supervisor import TaskProcess
from agata.runtime.task_user import DEFAULT_TASK_USER, check_interpreter, resolve_task_user
from agata.settings import load_settings

logger = logging.getLogger(__name__)


def demo_task_user() -> str:
    """The user the demo's task processes run as: the default task user when it can run
    this interpreter, else the demo's own user ("", said once). The demo is one person's
    machine; installed under ``/root`` or in a private folder (a wheel in a venv of
    one's own), AGATA's interpreter is closed to ``nobody``, and the demo must still run.
    A cloud or agent started on its own refuses such a task user instead, with the
    reason (:func:`~agata.runtime.task_user.check_interpreter`)."""
    user = resolve_task_user(DEFAULT_TASK_USER)
    if user is None:
        return DEFAULT_TASK_USER  # not root: tasks run as this user anyway
    try:
        check_interpreter(user)
    except AgataError as exc:
        logger.warning("the demo runs its tasks as this user, not %s: %s", user.name, exc.message)
        return ""
    return DEFAULT_TASK_USER


Progress = Callable[[str], None]


def find_example_task(name: str) -> Path:
    """The folder of an example task bundle (``agata/examples/tasks/<name>``, shipped in
    the wheel; ``examples/tasks/<name>`` of the checkout is the same folder)."""
    folder = example_path("tasks", name)
    missing = [f for f in ("server.py", "client.py") if not (folder / f).is_file()]
    if missing:
        raise AgataError(
            ErrorCode.NOT_FOUND,
            f"example task {name!r} at {folder} lacks {', '.join(missing)}; "
            "reinstall agata or pass --task-dir",
        )
    return folder


def bundle_files(folder: Path) -> list[tuple[str, bytes]]:
    """The files of a bundle folder to upload (Python files and trigger data, no caches)."""
    return [
        (path.name, path.read_bytes())
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".") and path.suffix != ".pyc"
    ]


@dataclass
class LabOptions:
    bus_url: str = "memory://"
    db_url: str = ""
    data_dir: Path | None = None  # None: a temporary folder, removed on close
    request_interval: float = 10.0
    server_grace: float = 2.0
    rpc_timeout: float = 10.0


class Lab:
    """Cloud + operator + agent + second client of one run; use ``async with``."""

    def __init__(self, options: LabOptions, progress: Progress | None = None) -> None:
        self.options = options
        self.progress = progress or (lambda message: None)
        self.events: list[dict[str, Any]] = []
        self._temp: tempfile.TemporaryDirectory[str] | None = None
        self.data_dir = options.data_dir
        self.node: CloudNode | None = None
        self.http: httpx.AsyncClient | None = None
        self.token = ""
        self.agent: Agent | None = None
        self._agent_task: asyncio.Task[None] | None = None
        self.device: DeviceInfo | None = None
        self.second_client: TaskProcess | None = None
        self._agent_events = asyncio.Event()
        self.started_at = time.time()
        self.task_user = demo_task_user()

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Lab:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the second client, the agent, then the cloud (and its server sides)."""
        if self.second_client is not None:
            with contextlib.suppress(Exception):
                await self.second_client.stop(2.0)
        if self.agent is not None and self._agent_task is not None:
            self.agent.shutdown()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._agent_task, 15)
        if self.http is not None:
            await self.http.aclose()
            self.http = None
        if self.node is not None:
            with contextlib.suppress(Exception):
                await self.node.stop()
            self.node = None
        if self._temp is not None:
            with contextlib.suppress(OSError):
                self._temp.cleanup()
            self._temp = None

    # -- the cloud and the operator ----------------------------------------------------

    async def start_cloud(self) -> CloudNode:
        if self.data_dir is None:
            self._temp = tempfile.TemporaryDirectory(prefix="agata-demo-")
            self.data_dir = Path(self._temp.name)
        settings = load_settings(
            flags={
                "data_dir": self.data_dir / "cloud",
                "bus_url": self.options.bus_url,
                "db_url": self.options.db_url or None,
                "gateway_host": "127.0.0.1",
                "gateway_port": 0,  # any free port: two demos never collide
                "server_grace_seconds": self.options.server_grace,
                "rpc_timeout": self.options.rpc_timeout,
                "register_events": True,
                "task_user": self.task_user,
            },
            environ={},
        )
        self.node = CloudNode(settings)
        await self.node.start()
        # An operator token of this run (the store keeps only its hash).
        self.token = new_token(OPERATOR_PREFIX)
        self.node.store.add_operator_token(f"demo {secrets.token_hex(3)}", hash_token(self.token))
        self.http = httpx.AsyncClient(
            base_url=self.node.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=self.options.rpc_timeout + 5,
        )
        return self.node

    @property
    def url(self) -> str:
        assert self.node is not None
        return self.node.url

    def record(self, service: str, function: str, event: str, **fields: Any) -> None:
        self.events.append(
            {
                "time": time.time(),
                "service": service,
                "function": function,
                "event": event,
                **fields,
            }
        )

    async def op(self, operation: str, body: dict[str, Any]) -> Any:
        """``POST /<operation>`` as the operator; the reply's value, or AgataError."""
        assert self.http is not None
        response = await self.http.post(f"/{operation}", json=body)
        if response.status_code != 200:
            raise AgataError(
                ErrorCode.INTERNAL, f"{operation} failed ({response.status_code}): {response.text}"
            )
        return response.json()

    async def register_task(self, task_id: str, bundle: Path, **fields: Any) -> None:
        """Create the task (timed as step 1) and upload its bundle over HTTP."""
        assert self.http is not None
        body = {"task_id": task_id, "username": "", "password": "", "files_paths": [], **fields}
        self.record(OPERATOR, "register task", "start", task_id=task_id)
        await self.op("rpc_exec_create_task", body)
        self.record(OPERATOR, "register task", "end", task_id=task_id)
        files = [("files", (name, data)) for name, data in bundle_files(bundle)]
        self.record(OPERATOR, "upload bundle", "start", task_id=task_id)
        response = await self.http.post(f"/api/tasks/{task_id}/files", files=files)
        if response.status_code != 200:
            raise AgataError(ErrorCode.INTERNAL, f"upload failed: {response.text}")
        self.record(OPERATOR, "upload bundle", "end", task_id=task_id, files=len(files))

    async def start_task(self, task_id: str) -> None:
        self.record(OPERATOR, "start task", "start", task_id=task_id)
        await self.op("rpc_exec_start_server_task", {"task_id": task_id})
        self.record(OPERATOR, "start task", "end", task_id=task_id)

    async def get_task(self, task_id: str) -> dict[str, Any]:
        value = await self.op("rpc_exec_get_task_by_id", {"task_id": task_id})
        assert isinstance(value, dict)
        return value

    async def cloud_events(self, task_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The cloud's recorded events of this run: those of its tasks and its device."""
        await asyncio.sleep(0.2)  # events are published without waiting; let them land
        seen: dict[tuple[Any, ...], dict[str, Any]] = {}
        since = self.started_at
        queries: list[dict[str, Any]] = [
            {"task_id": t, "since": since, "limit": 5000} for t in task_ids
        ]
        queries.append({"since": since, "limit": 5000})  # the device's, without a task
        user_id = self.device.user_id if self.device else None
        for query in queries:
            for event in await self.op("rpc_exec_get_task_events", query):
                mine = event.get("task_id") in task_ids or (
                    user_id is not None and event.get("user_id") == user_id
                )
                if mine and float(event["time"]) >= self.started_at:
                    key = (event["time"], event["service"], event["function"], event["event"])
                    seen[key] = {k: v for k, v in event.items() if v is not None}
        return list(seen.values())

    # -- the device ---------------------------------------------------------------------

    async def start_agent(self, user_id: str, *, sensors: Sequence[str] = ("camera",)) -> Agent:
        """Enroll a device and run its agent in this process."""
        assert self.data_dir is not None
        enrollment = await self.op("rpc_exec_create_enrollment_token", {"uses": 1})
        edge_dir = self.data_dir / "device"
        credential = await enroll_device(
            self.url, user_id, enrollment["enrollment_token"], edge_dir
        )
        settings = load_settings(
            flags={
                "data_dir": edge_dir,
                "cloud_url": self.url,
                "request_interval": self.options.request_interval,
                "register_events": True,
                "policy": "one",
                "task_user": self.task_user,
            },
            environ={},
        )
        self.device = DeviceInfo(user_id=user_id, data_qnt=120, sensors=tuple(sensors))
        self.agent = Agent(
            settings, self.device, credential=credential, on_event=self._on_agent_event, grace=2.0
        )
        self._agent_task = asyncio.create_task(self.agent.run(), name="edge agent")
        return self.agent

    def _on_agent_event(self, function: str, event: str, **fields: Any) -> None:
        stamp = fields.pop("time", None) or time.time()
        fields = {k: v for k, v in fields.items() if v is not None}
        self.events.append(
            {"time": stamp, "service": AGENT, "function": function, "event": event, **fields}
        )
        self._agent_events.set()
        task = fields.get("task_id", "")
        if function == "start task on device" and event == "end":
            self.progress(f"device: client of task {task} started (pid {fields.get('pid')})")
        elif function in {"task failed", "task finished"}:
            self.progress(f"device: task {task} {function.split()[1]}")
        elif function == "switch task" and event == "end":
            self.progress(f"device: switched from task {fields.get('from_task')} to {task}")

    def agent_crashed(self) -> BaseException | None:
        task = self._agent_task
        if task is not None and task.done() and not task.cancelled():
            return task.exception()
        return None

    def agent_event(
        self, function: str, event: str = "end", **fields: Any
    ) -> dict[str, Any] | None:
        for candidate in self.events:
            if (
                candidate["service"] == AGENT
                and candidate["function"] == function
                and candidate["event"] == event
                and all(candidate.get(k) == v for k, v in fields.items())
            ):
                return candidate
        return None

    async def wait_agent_event(
        self, function: str, timeout: float, **fields: Any
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.agent_event(function, **fields)
            if found is not None:
                return found
            crash = self.agent_crashed()
            if crash is not None:
                raise AgataError(ErrorCode.INTERNAL, f"the agent stopped: {crash}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgataError(
                    ErrorCode.TIMEOUT,
                    f"the device did not report {function!r} within {timeout:g} s",
                )
            self._agent_events.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._agent_events.wait(), min(remaining, 0.5))

    # -- the second client, started by hand as in the original ---------------------------

    async def start_second_client(self, bundle: Path, arguments: Sequence[str]) -> TaskProcess:
        """``python client.py cli <arguments>`` in the cloud's copy of the bundle."""

        async def on_message(message: TaskMessage) -> None:
            if isinstance(message, Info):
                self.record(SECOND_CLIENT, "info", message.info)
            elif isinstance(message, Error):
                self.record(SECOND_CLIENT, "error", message.exception[:500])
            elif isinstance(message, Model):
                acc = message.metrics.get("acc")
                self.record(SECOND_CLIENT, "model", f"round {message.round}", acc=acc)

        self.second_client = TaskProcess(
            bundle, "client.py", ["cli", *arguments], on_message=on_message, grace=2.0,
            name="second client",
        )  # fmt: skip
        await self.second_client.start()
        self.record(SECOND_CLIENT, "start", "Started by hand", pid=self.second_client.pid)
        return self.second_client
