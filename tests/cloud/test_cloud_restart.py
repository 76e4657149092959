"""The cloud killed with SIGKILL while a task runs, then restarted (a real process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from cloud_harness import CLIENT_PY, SERVER_PY
from helpers import free_port


def start_cloud(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agata",
            "cloud",
            "run",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("the cloud did not come up")


def server_processes(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"server.py" in cmdline and marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_sigkilled_cloud_leaves_no_server_and_reconciles(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "cloud", free_port()
    marker = f"--marker-{port}"
    cloud = start_cloud(data_dir, port)
    try:
        token = (data_dir / "operator-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=10) as http:
            http.post(
                "/rpc_exec_create_task",
                json={
                    "task_id": "held",
                    "host": "127.0.0.1",
                    "port": 9,
                    "username": "u",
                    "password": "p",
                    "files_paths": [],
                    "server_arguments": ["1", "--hold", marker],
                },
            ).raise_for_status()
            http.post(
                "/api/tasks/held/files",
                files=[
                    ("files", ("server.py", SERVER_PY.encode())),
                    ("files", ("client.py", CLIENT_PY.encode())),
                ],
            ).raise_for_status()
            http.post("/rpc_exec_start_server_task", json={"task_id": "held"}).raise_for_status()
        deadline = time.monotonic() + 10
        while not server_processes(marker):
            assert time.monotonic() < deadline, "the server side never started"
            time.sleep(0.05)

        cloud.send_signal(signal.SIGKILL)
        cloud.wait(10)
        deadline = time.monotonic() + 10
        while server_processes(marker):
            assert time.monotonic() < deadline, "the server side outlived its killed cloud"
            time.sleep(0.05)

        cloud = start_cloud(data_dir, port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=10) as http:
            task = http.post("/rpc_exec_get_task_by_id", json={"task_id": "held"}).json()
            restarted = http.post("/rpc_exec_start_server_task", json={"task_id": "held"})
            http.post("/rpc_exec_stop_server_task", json={"task_id": "held"})
    finally:
        cloud.send_signal(signal.SIGTERM)
        try:
            cloud.wait(15)
        except subprocess.TimeoutExpired:
            cloud.kill()

    assert task["running"] is False
    assert task["state"] == "stopped"
    assert "restarted" in task["state_reason"]
    assert restarted.status_code == 200
    assert not server_processes(marker)
