"""The cloud killed with SIGKILL while a flower-app run is on, then restarted: nothing
of the run is left (SuperLink, its SuperExec and ServerApp), the run is marked."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from flower_harness import EXAMPLE, app_files, flower_processes, free_port

from tests.cloud.test_cloud_restart import start_cloud


def test_a_killed_cloud_leaves_no_superlink_after_its_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGATA_TASK_USER", "")  # see flower_harness
    data_dir, port, fleet = tmp_path / "cloud", free_port(), free_port()
    cloud = start_cloud(data_dir, port)
    try:
        token = (data_dir / "operator-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=30) as http:
            http.post(
                "/rpc_exec_create_task",
                json={
                    "task_id": "app",
                    "kind": "flower-app",
                    "host": "127.0.0.1",
                    "port": fleet,
                    "username": "u",
                    "password": "p",
                    "files_paths": [],
                },
            ).raise_for_status()
            files = [("files", (name, data)) for name, data in app_files(EXAMPLE).items()]
            http.post("/api/tasks/app/files", files=files).raise_for_status()
            http.post("/rpc_exec_start_server_task", json={"task_id": "app"}).raise_for_status()
        deadline = time.monotonic() + 60
        while len(flower_processes(str(fleet))) < 2:  # the SuperLink and its SuperExec
            assert time.monotonic() < deadline, "the run's SuperLink never came up"
            time.sleep(0.2)

        cloud.send_signal(signal.SIGKILL)
        cloud.wait(10)
        cloud = start_cloud(data_dir, port)
        deadline = time.monotonic() + 30
        while flower_processes(str(fleet)):
            assert time.monotonic() < deadline, "the run's Flower processes outlived a restart"
            time.sleep(0.2)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=10) as http:
            task = http.post("/rpc_exec_get_task_by_id", json={"task_id": "app"}).json()
    finally:
        cloud.send_signal(signal.SIGTERM)
        try:
            cloud.wait(15)
        except subprocess.TimeoutExpired:
            cloud.kill()

    assert task["running"] is False
    assert task["state"] == "stopped"
    assert "restarted" in task["state_reason"]
