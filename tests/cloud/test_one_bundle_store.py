"""One BundleStore per process: the gateway, the task manager and its server sides share
it, so its per-task lock serialises a delete with the uploads and archives of the task.
Likewise one ArtifactStore per process, made by the wiring (CloudNode) with the
settings' size limit: nothing builds a second one as a fallback."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from cloud_harness import create_bundle_task, running_cloud

from agata.bus import create_bus
from agata.cloud.bundles.artifact_store import ArtifactStore
from agata.cloud.bundles.bundle_store import BundleStore
from agata.cloud.gateway import GatewayConfig
from agata.cloud.services.notifier import Notifier
from agata.cloud.services.server_tasks import ServerTasks
from agata.cloud.services.task_manager import TaskManager
from agata.errors import AgataError, ErrorCode
from agata.protocol import operations as ops
from agata.store.store_factory import create_store


class _BlockingTarget:
    """A file to write a zip into whose first write waits until released."""

    def __init__(self) -> None:
        self.writing = threading.Event()
        self.release = threading.Event()
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.writing.set()
        self.release.wait(10)
        self.data += data
        return len(data)

    def tell(self) -> int:
        return len(self.data)

    def flush(self) -> None:
        pass


async def test_a_delete_waits_for_the_archive_being_written(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        await create_bundle_task(cloud, "t1")
        manager = next(s for s in cloud.node._running if isinstance(s, TaskManager))
        assert manager.bundles is cloud.node.bundles
        assert manager.server_tasks.bundles is cloud.node.bundles

        target = _BlockingTarget()
        archiving = threading.Thread(target=cloud.node.bundles.write_archive, args=("t1", target))
        archiving.start()
        assert await asyncio.to_thread(target.writing.wait, 10)
        deleted_at: list[float] = []

        def delete() -> None:
            manager.bundles.delete("t1")
            deleted_at.append(time.monotonic())

        deleting = threading.Thread(target=delete)
        deleting.start()
        await asyncio.sleep(0.3)
        released_at = time.monotonic()
        target.release.set()
        await asyncio.to_thread(archiving.join, 10)
        await asyncio.to_thread(deleting.join, 10)

    assert deleted_at and deleted_at[0] >= released_at, "the delete ran inside the archive"
    assert not (cloud.node.bundles.root / "task_t1").exists()


async def test_the_server_side_bundle_path_goes_through_validation(tmp_path: Path) -> None:
    """A task id that is not a plain name never becomes a path (no folder is made)."""
    store = create_store(f"sqlite:///{tmp_path / 'a.db'}")
    bundles = BundleStore(tmp_path / "tasks")
    server_tasks = ServerTasks(
        store,
        Notifier(create_bus("memory://")),
        bundles,
        tmp_path / "w",
        artifacts=ArtifactStore(tmp_path / "artifacts"),
    )

    with pytest.raises(AgataError) as caught:
        await server_tasks.start("../escape", [])

    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert not (tmp_path / "w").exists() and not (tmp_path / "escape").exists()


def test_the_task_manager_takes_the_process_store(tmp_path: Path) -> None:
    """No TaskManager builds a store of its own (a second set of per-task locks)."""
    store = create_store(f"sqlite:///{tmp_path / 'a.db'}")
    bundles = BundleStore(tmp_path / "tasks")

    artifacts = ArtifactStore(tmp_path / "artifacts")

    manager = TaskManager(
        create_bus("memory://"), store, bundles, tmp_path / "work", artifacts=artifacts
    )

    assert manager.bundles is bundles and manager.server_tasks.bundles is bundles
    assert manager.artifacts is artifacts and manager.server_tasks.artifacts is artifacts
    assert ops.DELETE_TASK in manager.operations


def test_no_part_builds_an_artifact_store_of_its_own(tmp_path: Path) -> None:
    """The task manager, its server sides and the gateway must be given the process's
    artifact store: a fallback of their own would ignore --artifact-max-mb."""
    store = create_store(f"sqlite:///{tmp_path / 'a.db'}")
    bundles = BundleStore(tmp_path / "tasks")
    bus = create_bus("memory://")

    with pytest.raises(TypeError, match="artifacts"):
        TaskManager(bus, store, bundles, tmp_path / "work")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="artifacts"):
        ServerTasks(store, Notifier(bus), bundles, tmp_path / "w")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="artifacts"):
        GatewayConfig(bundles)  # type: ignore[call-arg]


async def test_every_part_of_a_cloud_process_uses_the_one_artifact_store(
    tmp_path: Path,
) -> None:
    async with running_cloud(tmp_path) as cloud:
        manager = next(s for s in cloud.node._running if isinstance(s, TaskManager))

        assert manager.artifacts is cloud.node.artifacts
        assert manager.server_tasks.artifacts is cloud.node.artifacts
