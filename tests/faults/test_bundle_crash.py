"""A real cloud process SIGKILLed in the middle of an upload, then started again: the
bundle on disk and its recorded listing agree (old files with the old listing, or new
files with the new one), and the task starts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import httpx
import pytest
from cloud_harness import SERVER_PY

from faults.harness import add_task, cloud_process, eventually
from faults.test_store_faults import bundle_is_consistent

V2_SERVER = b"# version 2\n" + SERVER_PY.encode()
V2_FILES = [("files", ("server.py", V2_SERVER)), ("files", ("helper.py", b"X = 2\n"))]


@pytest.mark.parametrize(
    ("point", "new_kept"),
    [
        ("bundle-journaled", False),  # previous files kept, nothing written yet
        ("bundle-file-moved", False),  # server.py replaced, helper.py not yet there
        ("bundle-written", False),  # both in place, listing not recorded
        ("bundle-recorded", True),  # listing recorded, journal not yet removed
    ],
)
async def test_a_cloud_killed_inside_an_upload_restarts_with_a_consistent_bundle(
    tmp_path: Path, point: str, new_kept: bool
) -> None:
    # Prepare: a task with its first bundle (version 2 after the upload)
    data_dir, marker = tmp_path / "cloud", tmp_path / "paused"
    async with cloud_process(data_dir) as cloud:
        await add_task(cloud, "t1", SERVER_PY)
        before = await cloud.ok("rpc_exec_get_task_by_id", {"task_id": "t1"})

    # Execute: an upload of a new server.py and a new file; the cloud freezes at `point`
    # and is killed there
    env = {"AGATA_PAUSE_AT": point, "AGATA_PAUSE_MARKER": str(marker)}
    async with cloud_process(data_dir, env=env) as cloud:
        upload = asyncio.create_task(cloud.http.post("/api/tasks/t1/files", files=V2_FILES))
        await eventually(marker.exists, timeout=10, what=f"the cloud pauses at {point}")
        os.kill(cloud.pid, signal.SIGKILL)
        await cloud.process.wait()
        with contextlib.suppress(httpx.HTTPError):
            await upload
    journals_left = list((data_dir / "tasks" / ".staging").glob("undo-*"))

    async with cloud_process(data_dir) as cloud:
        after = await cloud.ok("rpc_exec_get_task_by_id", {"task_id": "t1"})
        consistent = await bundle_is_consistent(cloud, "t1")
        started = await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})
        await cloud.op("rpc_exec_stop_server_task", {"task_id": "t1"})
        on_disk = (data_dir / "tasks" / "task_t1" / "server.py").read_bytes()
        log = cloud.log_text()
    journals_after = list((data_dir / "tasks" / ".staging").glob("undo-*"))

    # Assert: the kill left a journal; the restart finished or undid the upload
    assert journals_left, "the interrupted upload left no journal"
    assert consistent, (after["files"], log[-2000:])
    assert not journals_after
    if new_kept:
        assert after["version"] == before["version"] + 1
        assert on_disk == V2_SERVER
        assert {f["name"] for f in after["files"]} == {"server.py", "client.py", "helper.py"}
    else:
        assert after["version"] == before["version"]
        assert on_disk == SERVER_PY.encode()
        assert after["files"] == before["files"]
    assert started.status_code == 200, started.text
    assert "Traceback" not in log
