"""The red-team probe against a real cloud: a task's server side tries to reach the
cloud's secrets and other tasks' bundles, and leaves a setsid grandchild behind."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from cloud_harness import Cloud, create_bundle_task, running_cloud

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="a task user needs root and Linux"
)

PROBE = """
import json, os, sqlite3, subprocess, sys
from pathlib import Path
from agata.runtime import TaskReporter
data = Path(sys.argv[2])
found = {"uid": os.getuid(), "env": sorted(os.environ), "home": os.environ.get("HOME")}
def attempt(name, action):
    try:
        action()
        found[name] = "done"
    except Exception as exc:
        found[name] = type(exc).__name__
attempt("read token", lambda: (data / "operator-token").read_text())
attempt("read database", lambda: (data / "agata.db").read_bytes())
attempt("list data", lambda: os.listdir(data))
served = data / "tasks"
attempt("write other bundle", lambda: (served / "task_t2" / "server.py").write_text("x"))
attempt("write own served bundle", lambda: (served / "task_t1" / "server.py").write_text("x"))
attempt("write bundle copy", lambda: Path("server.py").write_text("x"))
attempt("write work", lambda: (Path(sys.argv[1]) / "out.txt").write_text("x"))
child = subprocess.Popen(["setsid", "sleep", "1000"])
found["grandchild"] = child.pid
TaskReporter().send_print(json.dumps(found))
import time; time.sleep(120)
"""


async def run_probe(cloud: Cloud, data_dir: Path) -> dict[str, object]:
    await create_bundle_task(cloud, "t2")
    await create_bundle_task(cloud, "t1", server_arguments=[str(data_dir)])
    files = [("files", ("server.py", PROBE.encode()))]
    reply = await cloud.http.post("/api/tasks/t1/files", files=files, headers=cloud.auth)
    assert reply.status_code == 200, reply.text
    started = await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})
    assert started.status_code == 200, started.text
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in cloud.node.store.tail_logs("t1"):
            if line.text.startswith("{"):
                return dict(json.loads(line.text))
        await asyncio.sleep(0.05)
    raise AssertionError("the probe reported nothing")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_task_cannot_reach_the_clouds_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGATA_TEST_SECRET_OF_THE_CLOUD", "s3cret")
    monkeypatch.setenv("DATABASE_PASSWORD", "s3cret")
    data_dir = (tmp_path / "cloud").resolve()
    async with running_cloud(tmp_path) as cloud:
        found = await run_probe(cloud, data_dir)

        assert found["uid"] != 0
        for action in ("read token", "read database", "list data"):
            assert found[action] == "PermissionError", action
        for action in ("write other bundle", "write own served bundle", "write bundle copy"):
            assert found[action] == "PermissionError", action
        assert found["write work"] == "done"
        env = found["env"]
        assert isinstance(env, list)
        assert "AGATA_TASK_TOKEN" not in env
        assert not any("SECRET" in name or "PASSWORD" in name for name in env)
        assert found["home"] != os.environ.get("HOME")

        grandchild = found["grandchild"]
        assert isinstance(grandchild, int) and alive(grandchild)
        stopped = await cloud.op("rpc_exec_stop_server_task", {"task_id": "t1"})
        assert stopped.status_code == 200
        for _ in range(200):  # at most 10 s
            if not alive(grandchild):
                break
            await asyncio.sleep(0.05)
        assert not alive(grandchild), "the setsid grandchild outlived stop"


async def test_the_data_folder_and_database_are_private_whatever_the_umask(
    tmp_path: Path,
) -> None:
    old = os.umask(0o022)
    try:
        async with running_cloud(tmp_path) as cloud:
            data_dir = cloud.node.data_dir
            database = data_dir / "agata.db"
            sqlite3.connect(database).close()
    finally:
        os.umask(old)

    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert database.stat().st_mode & 0o777 == 0o600
    assert (data_dir / "operator-token").stat().st_mode & 0o777 == 0o600
