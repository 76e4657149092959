"""The end of a task's server side while the store's disk is full (a real cloud process on
a small tmpfs): the end is recorded once there is room, without a restart, and a cloud
restarted onto a full disk comes up and ends its leftovers the same way."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from faults.harness import CloudProcess, add_task, cloud_process, eventually, task_ended
from faults.test_store_faults import fill, small_file_system

#: Reports a round, then finishes once the file named by its argument exists.
WAIT_FOR_FLAG_PY = """
import os, sys, time
from agata.runtime import TaskReporter
r = TaskReporter()
r.send_metrics(1, acc=0.5)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
r.finished()
"""


async def offered(cloud: CloudProcess, user_id: str) -> list[str]:
    offers = await cloud.ok("rpc_exec_client_requesting_task", {"user_id": user_id})
    return [offer["ID"] for offer in offers]


async def test_an_end_while_the_disk_is_full_is_recorded_once_there_is_room(
    tmp_path: Path, shared_dir: Path
) -> None:
    data_dir, flag = tmp_path / "cloud", shared_dir / "finish-now"
    with small_file_system(data_dir):
        async with cloud_process(data_dir) as cloud:
            # Prepare: a running task, a device it is offered to
            await add_task(cloud, "t1", WAIT_FOR_FLAG_PY, server_arguments=[str(flag)])
            await cloud.ok("rpc_exec_update_user_info", {"user_id": "d1", "data_qnt": 1})
            await cloud.ok("rpc_exec_start_server_task", {"task_id": "t1"})
            offered_running = await offered(cloud, "d1")
            await eventually(
                lambda: cloud.ok("rpc_exec_get_task_metrics", {"task_id": "t1"}),
                what="the server side reports its round",
            )

            # Execute: the disk fills up, then the server side finishes
            filler = data_dir / "filler"
            fill(filler)
            flag.touch()
            await eventually(
                lambda: "cannot record the end of task t1" in cloud.log_text(),
                timeout=10,
                what="the end is refused by the full store",
            )
            while_full: dict[str, Any] = await cloud.ok(
                "rpc_exec_get_task_by_id", {"task_id": "t1"}
            )
            offered_while_full = await offered(cloud, "d1")
            start_while_full = await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})
            health_while_full = await cloud.http.get("/healthz")

            # Execute: space is freed; the cloud keeps running
            filler.unlink()
            freed = time.monotonic()
            ended = await eventually(
                lambda: task_ended(cloud, "t1"), timeout=15, what="the end is recorded"
            )
            recorded_after = time.monotonic() - freed
            offered_after = await offered(cloud, "d1")
            restarted = await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})
            log = cloud.log_text()

    print(
        f"\nend of a task while the disk is full: recorded {recorded_after:.2f} s after space "
        f"was freed (retries 0.25 s doubling to 8 s); while full: start "
        f"{start_while_full.status_code}, offered {offered_while_full}"
    )
    # Assert: while full, the task is not offered and start says why (503, not 409)
    assert offered_running == ["t1"]
    assert while_full["running"] is True  # the store could not take the end
    assert offered_while_full == []
    assert start_while_full.status_code == 503, start_while_full.text
    assert "has not taken its end yet" in start_while_full.json()["detail"]
    assert health_while_full.status_code == 200
    # Once there is room the end is recorded with its real outcome; the task starts again
    assert ended["state"] == "finished", ended
    assert offered_after == []
    assert restarted.status_code == 200, restarted.text
    assert "recorded the end of task t1 after" in log
    assert "Traceback" not in log


async def test_a_cloud_restarted_onto_a_full_disk_ends_its_leftover_when_there_is_room(
    tmp_path: Path,
) -> None:
    data_dir, flag = tmp_path / "cloud", tmp_path / "never"
    with small_file_system(data_dir):
        # Prepare: a running task; the cloud is killed and the disk fills up
        async with cloud_process(data_dir) as cloud:
            await add_task(cloud, "t1", WAIT_FOR_FLAG_PY, server_arguments=[str(flag)])
            await cloud.ok("rpc_exec_update_user_info", {"user_id": "d1", "data_qnt": 1})
            await cloud.ok("rpc_exec_start_server_task", {"task_id": "t1"})
            os.kill(cloud.pid, signal.SIGKILL)
            await cloud.process.wait()
        filler = data_dir / "filler"
        fill(filler)

        # Execute: the cloud starts on the full disk, then space is freed
        async with cloud_process(data_dir) as cloud:
            while_full = await cloud.ok("rpc_exec_get_task_by_id", {"task_id": "t1"})
            offered_while_full = await offered(cloud, "d1")
            filler.unlink()
            freed = time.monotonic()
            ended = await eventually(
                lambda: task_ended(cloud, "t1"), timeout=15, what="the leftover is ended"
            )
            recorded_after = time.monotonic() - freed
            restarted = await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})
            await cloud.op("rpc_exec_stop_server_task", {"task_id": "t1"})
            log = cloud.log_text()

    print(f"\nleftover of a cloud restarted onto a full disk: ended {recorded_after:.2f} s after")
    # Assert: the cloud came up; the leftover was ended with the reason once possible
    assert while_full["running"] is True
    assert offered_while_full == []
    assert ended["state"] == "stopped"
    assert "the cloud restarted while the task ran" in ended["state_reason"]
    assert restarted.status_code == 200, restarted.text
    assert "Traceback" not in log
