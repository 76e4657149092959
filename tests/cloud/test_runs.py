"""Runs through a real cloud (services + gateway on loopback, real server processes):
each start is a run with its own record, metrics, logs and events; the queue of
--max-running-tasks; min_devices and the start deadline; artifacts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cloud_harness import Cloud, create_bundle_task, running_cloud

SAVING_SERVER = """
import os, sys
from agata.runtime import TaskReporter
r = TaskReporter()
work = sys.argv[1]
with open(os.path.join(work, "model.bin"), "wb") as f:
    f.write(b"weights" * 1000)
with open(os.path.join(work, "big.bin"), "wb") as f:
    f.write(b"x" * (2 * 1024 * 1024))
with open(os.path.join(work, ".hidden"), "wb") as f:
    f.write(b"h")
r.save_artifact("model.bin")
r.save_artifact(os.path.join(work, "big.bin"))
r.save_artifact(".hidden")
r.save_artifact("/etc/hostname")
r.save_artifact("missing.bin")
r.send_metrics(1, acc=0.5)
r.finished()
"""


async def _result(cloud: Cloud, name: str, body: dict[str, Any]) -> Any:
    response = await cloud.op(name, body)
    assert response.status_code == 200, response.text
    return response.json()


async def _until(check: Callable[[], Awaitable[Any]], seconds: float = 20.0) -> Any:
    """Poll ``check`` until it returns something true (bounded)."""
    deadline = time.monotonic() + seconds
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def _task(cloud: Cloud, task_id: str) -> dict[str, Any]:
    task: dict[str, Any] = await _result(cloud, "rpc_exec_get_task_by_id", {"task_id": task_id})
    return task


async def _ended(cloud: Cloud, task_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        task = await _task(cloud, task_id)
        return None if task["running"] or task["state"] == "queued" else task

    ended: dict[str, Any] = await _until(check)
    return ended


async def test_a_restart_is_a_new_run_with_its_own_record(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        # Prepare: a task that ran 4 rounds
        await create_bundle_task(cloud, server_arguments=["4"])
        await _result(cloud, "rpc_exec_start_server_task", {"task_id": "t1"})
        first = await _ended(cloud, "t1")

        # Execute: started again with 2 rounds
        await _result(cloud, "rpc_exec_start_server_task", {"task_id": "t1", "arguments": ["2"]})
        second = await _ended(cloud, "t1")
        runs = await _result(cloud, "rpc_exec_list_runs", {"task_id": "t1"})
        one = await _result(cloud, "rpc_exec_get_run", {"task_id": "t1", "run": 1})
        metrics = await _result(cloud, "rpc_exec_get_task_metrics", {"task_id": "t1"})
        old_metrics = await _result(cloud, "rpc_exec_get_task_metrics", {"task_id": "t1", "run": 1})
        logs = await _result(cloud, "rpc_exec_get_task_logs", {"task_id": "t1", "run": 1})
        events = await _result(cloud, "rpc_exec_get_task_events", {"task_id": "t1", "run": 2})

    # Assert: the task describes run 2; run 1 keeps what it had
    assert (first["run"], first["last_round"]) == (1, 4)
    assert second["run"] == 2 and second["last_round"] == 2 and second["state"] == "finished"
    assert second["run_state"] == "finished"
    assert [r["run"] for r in runs] == [2, 1]
    assert runs[0]["server_arguments"] == ["2"]
    assert one["server_arguments"] == ["4"] and one["state"] == "finished"
    assert one["last_round"] == 4 and one["started_at"] and one["ended_at"]
    assert one["bundle_version"] == first["version"] and {f["name"] for f in one["files"]} == {
        "server.py",
        "client.py",
    }
    assert one["devices"] == [] and runs[0]["devices"] is None
    assert [m["round"] for m in metrics] == [1, 2] and {m["run"] for m in metrics} == {2}
    assert [m["round"] for m in old_metrics] == [1, 2, 3, 4]
    assert logs and all(line["run"] == 1 for line in logs)
    assert any("run 2" in e["event"] for e in events)
    assert all(e["run"] in (2, None) for e in events)


async def test_unknown_runs_are_404_and_bad_numbers_400(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        await create_bundle_task(cloud)
        never = await _result(cloud, "rpc_exec_list_runs", {"task_id": "t1"})
        no_metrics = await _result(cloud, "rpc_exec_get_task_metrics", {"task_id": "t1"})
        unknown_run = await cloud.op("rpc_exec_get_run", {"task_id": "t1", "run": 3})
        unknown_task = await cloud.op("rpc_exec_list_runs", {"task_id": "nope"})
        metrics_of_none = await cloud.op("rpc_exec_get_task_metrics", {"task_id": "t1", "run": 1})
        bad = [
            await cloud.op("rpc_exec_get_run", {"task_id": "t1", "run": value})
            for value in (0, -1, "abc", 1.5, None)
        ]
        events_without_task = await cloud.op("rpc_exec_get_task_events", {"run": 1})
        artifact_bad_run = await cloud.http.get(
            "/api/tasks/t1/runs/0/artifacts/model.bin", headers=cloud.auth
        )
        artifact_unknown_run = await cloud.http.get(
            "/api/tasks/t1/runs/4/artifacts/model.bin", headers=cloud.auth
        )

    assert never == [] and no_metrics == []
    assert unknown_run.status_code == 404 and "run 3" in unknown_run.json()["detail"]
    assert unknown_task.status_code == 404
    assert metrics_of_none.status_code == 404
    assert [r.status_code for r in bad] == [400] * 5
    assert events_without_task.status_code == 400
    assert artifact_bad_run.status_code == 400
    assert artifact_unknown_run.status_code == 404


async def test_starts_past_the_cap_are_queued_and_start_in_order(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, max_running_tasks=1) as cloud:
        for name in ("a", "b", "c"):
            await create_bundle_task(cloud, name, server_arguments=["1", "--hold"])
        for name in ("a", "b", "c"):
            await _result(cloud, "rpc_exec_start_server_task", {"task_id": name})
        b_queued = await _task(cloud, "b")
        again = await cloud.op("rpc_exec_start_server_task", {"task_id": "b"})
        run_b = await _result(cloud, "rpc_exec_get_run", {"task_id": "b", "run": 1})

        # Execute: a ends -> b starts (not c)
        await _result(cloud, "rpc_exec_stop_server_task", {"task_id": "a"})

        async def b_running() -> bool:
            return bool((await _task(cloud, "b"))["running"])

        await _until(b_running)
        c_still = await _task(cloud, "c")
        # A queued run stopped is ended, never started
        await _result(cloud, "rpc_exec_stop_server_task", {"task_id": "c"})
        c_stopped = await _result(cloud, "rpc_exec_get_run", {"task_id": "c", "run": 1})
        await _result(cloud, "rpc_exec_stop_server_task", {"task_id": "b"})

    assert not b_queued["running"] and b_queued["state"] == "queued"
    assert b_queued["run_state"] == "queued"
    assert again.status_code == 409
    assert run_b["state"] == "queued" and run_b["started_at"] is None
    assert "at most 1" in run_b["reason"]
    assert c_still["state"] == "queued"
    assert c_stopped["state"] == "stopped" and c_stopped["started_at"] is None


async def test_a_run_waits_for_its_devices_and_fails_past_its_deadline(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        # Prepare: a task wanting more devices than the fleet has
        await create_bundle_task(
            cloud,
            server_arguments=["1", "--hold"],
            min_devices=2,
            start_deadline_s=1.0,
        )
        await _result(cloud, "rpc_exec_update_user_info", {"user_id": "dev-1"})

        # Execute
        await _result(cloud, "rpc_exec_start_server_task", {"task_id": "t1"})
        waiting = await _task(cloud, "t1")
        await _result(
            cloud,
            "rpc_exec_report_device_task",
            {"user_id": "dev-1", "task_id": "t1", "status": "running"},
        )
        ended = await _ended(cloud, "t1")
        run = await _result(cloud, "rpc_exec_get_run", {"task_id": "t1", "run": 1})

    # Assert: waiting (offered, running), then the deadline error; no hang
    assert waiting["running"] and waiting["run_state"] == "waiting"
    assert ended["state"] == "failed"
    assert ended["state_reason"] == "only 1 of 2 devices joined within 1 s"
    assert run["state"] == "failed" and run["reason"] == ended["state_reason"]
    assert run["devices_joined"] == 1
    assert [d["user_id"] for d in run["devices"]] == ["dev-1"]


async def test_a_waiting_run_runs_once_its_devices_joined(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        await create_bundle_task(cloud, server_arguments=["1", "--hold"], min_devices=2)
        for user in ("dev-1", "dev-2"):
            await _result(cloud, "rpc_exec_update_user_info", {"user_id": user})
        await _result(cloud, "rpc_exec_start_server_task", {"task_id": "t1"})
        for user in ("dev-1", "dev-2"):
            await _result(
                cloud,
                "rpc_exec_report_device_task",
                {"user_id": user, "task_id": "t1", "status": "running", "run": 1},
            )

        async def running() -> bool:
            return (await _task(cloud, "t1"))["run_state"] == "running"

        await _until(running)
        run = await _result(cloud, "rpc_exec_get_run", {"task_id": "t1", "run": 1})
        await _result(cloud, "rpc_exec_stop_server_task", {"task_id": "t1"})
        stopped = await _result(cloud, "rpc_exec_get_run", {"task_id": "t1", "run": 1})

    assert run["devices_joined"] == 2
    assert {d["user_id"] for d in run["devices"]} == {"dev-1", "dev-2"}
    assert all(d["joined_at"] and d["status"] == "running" for d in run["devices"])
    assert stopped["state"] == "stopped" and stopped["reason"] == "stopped by the operator"


async def test_artifacts_are_kept_by_the_rules_and_downloaded(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, artifact_max_mb=1) as cloud:
        await create_bundle_task(cloud)
        files = [
            ("files", ("server.py", SAVING_SERVER.encode())),
            ("files", ("client.py", b"print('client')\n")),
        ]
        response = await cloud.http.post("/api/tasks/t1/files", files=files, headers=cloud.auth)
        assert response.status_code == 200, response.text
        await _result(cloud, "rpc_exec_start_server_task", {"task_id": "t1"})
        await _ended(cloud, "t1")
        run = await _result(cloud, "rpc_exec_get_run", {"task_id": "t1", "run": 1})
        logs = await _result(cloud, "rpc_exec_get_task_logs", {"task_id": "t1", "limit": 100})
        download = await cloud.http.get(
            "/api/tasks/t1/runs/1/artifacts/model.bin", headers=cloud.auth
        )
        anonymous = await cloud.http.get("/api/tasks/t1/runs/1/artifacts/model.bin")
        refused = await cloud.http.get("/api/tasks/t1/runs/1/artifacts/big.bin", headers=cloud.auth)
        kept = sorted(p.name for p in (tmp_path / "cloud" / "artifacts").rglob("*"))

    assert [a["name"] for a in run["artifacts"]] == ["model.bin"]
    assert run["artifacts"][0]["size"] == 7000
    assert download.status_code == 200 and download.content == b"weights" * 1000
    assert "model.bin" in download.headers["content-disposition"]
    assert anonymous.status_code == 401
    assert refused.status_code == 404
    artifact_lines = [x["text"] for x in logs if x["stream"] == "artifact"]
    assert any("big.bin" in x and "over the limit" in x for x in artifact_lines)
    assert any("'.hidden'" in x for x in artifact_lines)
    assert any("/etc/hostname" in x and "not inside" in x for x in artifact_lines)
    assert any("missing.bin" in x and "no such file" in x for x in artifact_lines)
    assert kept == ["model.bin", "run_1", "task_t1"]  # nothing half-written


async def test_runs_are_listed_in_pages_newest_first(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        await create_bundle_task(cloud, server_arguments=["1"])
        for _ in range(3):
            await _result(cloud, "rpc_exec_start_server_task", {"task_id": "t1"})
            await _ended(cloud, "t1")

        first = await _result(cloud, "rpc_exec_list_runs", {"task_id": "t1", "limit": 2})
        rest = await _result(cloud, "rpc_exec_list_runs", {"task_id": "t1", "before": 2})
        too_many = await cloud.op("rpc_exec_list_runs", {"task_id": "t1", "limit": 1001})
        events = await _result(cloud, "rpc_exec_get_task_events", {"task_id": "t1", "run": 3})

    assert [r["run"] for r in first] == [3, 2] and [r["run"] for r in rest] == [1]
    assert too_many.status_code == 400
    started = [e for e in events if "Task started on cloud" in e["event"]]
    assert [e["run"] for e in started] == [3]


async def test_a_queued_run_whose_bundle_changed_fails_with_the_reason(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, max_running_tasks=1) as cloud:
        for name in ("a", "b"):
            await create_bundle_task(cloud, name, server_arguments=["1", "--hold"])
        await _result(cloud, "rpc_exec_start_server_task", {"task_id": "a"})
        await _result(cloud, "rpc_exec_start_server_task", {"task_id": "b"})
        files = [("files", ("client.py", b"print('changed')\n"))]
        response = await cloud.http.post("/api/tasks/b/files", files=files, headers=cloud.auth)
        assert response.status_code == 200, response.text

        await _result(cloud, "rpc_exec_stop_server_task", {"task_id": "a"})
        ended = await _ended(cloud, "b")
        run = await _result(cloud, "rpc_exec_get_run", {"task_id": "b", "run": 1})

    assert ended["state"] == "failed" and run["state"] == "failed"
    assert "the bundle was replaced while the run was queued" in run["reason"]
