"""A real cloud in a background thread, seeded with tasks and devices, for sync clients
(schemathesis, the auth matrix): its gateway listens on a loopback port. And the
gateway's OpenAPI document, built without a server (tests are parametrized from it)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_harness import Cloud, create_bundle_task, running_cloud

from agata.bus import create_bus
from agata.cloud.bundles.artifact_store import ArtifactStore
from agata.cloud.bundles.bundle_store import BundleStore
from agata.cloud.gateway import GatewayConfig, create_gateway

#: The task password of every seeded task: it must never reach a device unless legacy.
TASK_PASSWORD = "s3cr3t-task-pass"
TASK_USERNAME = "task-user"
#: The one file of the seeded cloud's wheelhouse.
WHEEL = "agatatoy-1.0-py3-none-any.whl"


@dataclass
class Seeded:
    """What :class:`ThreadedCloud` created."""

    url: str
    operator: str  # operator token
    devices: dict[str, str] = field(default_factory=dict)  # user_id -> credential
    db_path: Path | None = None
    secrets: list[str] = field(default_factory=list)  # every token handed out


async def enroll(cloud: Cloud, user_id: str) -> str:
    enrollment = (await cloud.op("rpc_exec_create_enrollment_token", {})).json()
    body = {"user_id": user_id, "enrollment_token": enrollment["enrollment_token"]}
    response = await cloud.http.post("/api/devices/enroll", json=body)
    assert response.status_code == 200, response.text
    credential: str = response.json()["credential"]
    return credential


async def seed(cloud: Cloud) -> Seeded:
    """Tasks: ``t-match`` running for devices with data_qnt > 50, ``t-other`` running for
    nobody, ``t-idle`` not running. Devices: ``dev-a`` (matches), ``dev-b`` (does not)."""
    auth = {"username": TASK_USERNAME, "password": TASK_PASSWORD}
    hold = ["1", "--hold"]
    await create_bundle_task(
        cloud, "t-match", selection_criteria="data_qnt > 50", server_arguments=hold, **auth
    )
    await create_bundle_task(
        cloud, "t-other", selection_criteria="data_qnt < 0", server_arguments=hold, **auth
    )
    await create_bundle_task(cloud, "t-idle", **auth)
    for task_id in ("t-match", "t-other"):
        started = await cloud.op("rpc_exec_start_server_task", {"task_id": task_id})
        assert started.status_code == 200, started.text
    seeded = Seeded(url=cloud.node.url, operator=cloud.token)
    for user_id, data_qnt in (("dev-a", 100), ("dev-b", 1)):
        credential = await enroll(cloud, user_id)
        body = {"user_id": user_id, "data_qnt": data_qnt, "sensors": ["camera"]}
        reported = await cloud.op("rpc_exec_update_user_info", body, token=credential)
        assert reported.status_code == 200, reported.text
        seeded.devices[user_id] = credential
    seeded.secrets = [cloud.token, *seeded.devices.values()]
    url = cloud.node.settings.database_url
    seeded.db_path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite") else None
    return seeded


class ThreadedCloud:
    """``running_cloud`` + :func:`seed` on an event loop of its own thread."""

    def __init__(self, tmp_path: Path, **flags: Any) -> None:
        self.tmp_path = tmp_path
        self.flags = flags
        self.seeded: Seeded | None = None
        self.cloud: Cloud | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="threaded-cloud", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running_cloud(self.tmp_path, **self.flags) as cloud:
            self.cloud = cloud
            self.seeded = await seed(cloud)
            self._ready.set()
            await self._stop.wait()

    def call(self, coroutine: Any) -> Any:
        """Run a coroutine on the cloud's loop (e.g. to use the harness from a sync test)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def __enter__(self) -> Seeded:
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("the cloud did not start in 60 s")
        if self._error is not None:
            raise self._error
        assert self.seeded is not None
        return self.seeded

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def gateway_document() -> dict[str, Any]:
    """The gateway's OpenAPI document, built without serving it (tests need it at
    collection time; ``test_the_served_document_is_the_one_fuzzed`` checks that it is
    the running gateway's)."""
    folder = Path(tempfile.mkdtemp(prefix="agata-openapi-"))
    try:
        config = GatewayConfig(BundleStore(folder / "t"), ArtifactStore(folder / "a"))
        app = create_gateway(create_bus("memory://"), config)
        return app.openapi()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
