"""``reconcile``: what a starting cloud does with tasks a dead one left marked running."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from cloud_harness import Cloud, cloud_settings, create_bundle_task, running_cloud

from agata.cloud.cloud_node import CloudNode
from agata.cloud.services.task_manager import TaskManager
from agata.errors import AgataError, ErrorCode
from agata.store.store import TaskState


async def _left_running(tmp_path: Path) -> None:
    """A task the store holds running with no process: what a SIGKILLed cloud leaves."""
    async with running_cloud(tmp_path) as cloud:
        await create_bundle_task(cloud, "held", server_arguments=["1", "--hold"])
        cloud.node.store.set_task_state(
            "held", running=True, state=TaskState.RUNNING, expected_running=False
        )


@asynccontextmanager
async def _cloud_again(tmp_path: Path, **flags: object) -> AsyncIterator[Cloud]:
    """The cloud of :func:`_left_running` started again on its data (its token kept)."""
    node = CloudNode(cloud_settings(tmp_path, server_grace_seconds=2.0, **flags))  # type: ignore[arg-type]
    await node.start()
    token = (tmp_path / "cloud" / "operator-token").read_text().strip()
    try:
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            yield Cloud(node, http, token)
    finally:
        await node.stop()


def _manager(node: object) -> TaskManager:
    return next(s for s in node._running if isinstance(s, TaskManager))  # type: ignore[attr-defined]


@pytest.mark.parametrize("reconcile", ["stop", "restart"])
async def test_leftover_task_is_stopped_or_started_again(tmp_path: Path, reconcile: str) -> None:
    await _left_running(tmp_path)

    async with _cloud_again(tmp_path, reconcile=reconcile) as cloud:
        task = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "held"})).json()
        local = _manager(cloud.node).server_tasks.is_local("held")
        started_at = time.monotonic()
        if reconcile == "restart":
            await cloud.op("rpc_exec_stop_server_task", {"task_id": "held"})

    if reconcile == "stop":
        assert task["running"] is False and task["state"] == "stopped"
        assert not local
    else:
        assert task["running"] is True and task["state"] == "running", task
        assert local, "no server side runs for the restarted task"
    assert time.monotonic() - started_at < 30


def test_an_unknown_reconcile_is_refused(tmp_path: Path) -> None:
    from agata.settings import CloudSettings, load_settings

    with pytest.raises(AgataError) as caught:
        load_settings(flags={"reconcile": "resume"}, environ={}, side=CloudSettings)

    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert "reconcile" in caught.value.message
