"""The cloud's caches of devices are sized from request_interval, not from its default."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cloud_harness import create_bundle_task, running_cloud

from agata.cloud.gateway.auth import DEVICE_CACHE_POLLS as CREDENTIAL_POLLS
from agata.cloud.gateway.auth import Authenticator
from agata.cloud.services.task_manager import DEVICE_CACHE_POLLS, TaskManager


async def test_a_short_poll_interval_shortens_the_device_caches(tmp_path: Path) -> None:
    """With request_interval 0.2 s a device's attributes changed behind the task
    manager's back (no notification) count within three polls, not 30 s."""
    async with running_cloud(tmp_path, request_interval=0.2) as cloud:
        manager = next(s for s in cloud.node._running if isinstance(s, TaskManager))
        assert manager.device_cache_seconds == DEVICE_CACHE_POLLS * 0.2
        await cloud.op("rpc_exec_update_user_info", {"user_id": "d1", "data_qnt": 10})
        await create_bundle_task(
            cloud, "t1", selection_criteria="data_qnt > 50", server_arguments=["1", "--hold"]
        )
        started = await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})
        assert started.status_code == 200, started.text
        try:
            first = await cloud.op("rpc_exec_client_requesting_task", {"user_id": "d1"})
            assert first.json() == []
            cloud.node.store.upsert_device("d1", data_qnt=100)  # no notification

            deadline = time.monotonic() + 5
            offered: list[str] = []
            while time.monotonic() < deadline and not offered:
                await asyncio.sleep(0.1)
                reply = await cloud.op("rpc_exec_client_requesting_task", {"user_id": "d1"})
                offered = [offer["ID"] for offer in reply.json()]
        finally:
            await cloud.op("rpc_exec_stop_server_task", {"task_id": "t1"})

    assert offered == ["t1"]


def test_credential_cache_spans_polls_of_the_configured_interval() -> None:
    auth = Authenticator(rpc=None, poll_interval=30.0)  # type: ignore[arg-type]

    assert auth.device_cache_seconds == CREDENTIAL_POLLS * 30.0
