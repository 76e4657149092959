"""The cloud's SQLite database locked by another writer, and its disk full, seen
through the gateway of a real cloud process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloud_harness import SERVER_PY

from faults.harness import CloudProcess, add_task, cloud_process

#: What must never reach a caller: a traceback, SQL, the driver's own words.
LEAKS = ("Traceback", "INSERT", "SELECT", "UPDATE ", "sqlite3", "OperationalError")


def new_task(task_id: str) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "host": "127.0.0.1",
        "port": 9,
        "username": "u",
        "password": "p",
        "files_paths": [],
        "tags": ["a", "b"],
    }


def assert_clear(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert words in detail, detail
    for leak in LEAKS:
        assert leak not in detail, detail


def rows_of(db: Path, task_id: str) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {
            table: conn.execute(
                f"SELECT count(*) FROM {table} WHERE task_id = ?", (task_id,)
            ).fetchone()[0]
            for table in ("tasks", "task_tags", "task_files")
        }


def integrity(db: Path) -> str:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


async def bundle_is_consistent(cloud: CloudProcess, task_id: str) -> bool:
    """Every file of the recorded listing is on disk with the recorded SHA-256."""
    task = await cloud.ok("rpc_exec_get_task_by_id", {"task_id": task_id})
    folder = cloud.data_dir / "tasks" / f"task_{task_id}"
    on_disk = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    return on_disk == {f["name"]: f["sha256"] for f in task["files"]}


async def upload(cloud: CloudProcess, task_id: str, name: str, data: bytes) -> httpx.Response:
    return await cloud.http.post(f"/api/tasks/{task_id}/files", files=[("files", (name, data))])


async def timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await call
    return response, time.monotonic() - started


async def test_a_locked_database_gives_a_clear_503_and_reads_go_on(tmp_path: Path) -> None:
    # Prepare: a cloud with one task; another connection holds the write lock
    async with cloud_process(tmp_path / "cloud") as cloud:
        db = cloud.data_dir / "agata.db"
        await add_task(cloud, "t1", SERVER_PY)
        holder = sqlite3.connect(db, isolation_level=None, timeout=0)
        holder.execute("BEGIN IMMEDIATE")
        try:
            # Execute: writes through the gateway while the lock is held; one read
            # arrives while the first write waits for the lock
            create = asyncio.create_task(timed(cloud.op("rpc_exec_create_task", new_task("t2"))))
            await asyncio.sleep(0.5)
            read_while_waiting, read_wait = await timed(
                cloud.op("rpc_exec_get_task_by_id", {"task_id": "t1"})
            )
            created, create_seconds = await create
            listed, list_seconds = await timed(cloud.op("rpc_exec_list_tasks", {}))
            got, get_seconds = await timed(cloud.op("rpc_exec_get_task_by_id", {"task_id": "t1"}))
            uploaded = await upload(cloud, "t1", "server.py", b"# version 2\n" + SERVER_PY.encode())
            started = await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})
            consistent_while_locked = await bundle_is_consistent(cloud, "t1")
        finally:
            holder.execute("ROLLBACK")
            holder.close()

        # Execute: the lock is released
        rows_after_failure = rows_of(db, "t2")
        created_after = await cloud.op("rpc_exec_create_task", new_task("t2"))
        uploaded_after = await upload(cloud, "t1", "extra.txt", b"more")
        task_after = await cloud.ok("rpc_exec_get_task_by_id", {"task_id": "t1"})
        consistent_after = await bundle_is_consistent(cloud, "t1")
        log = cloud.log_text()

    print(
        f"\nSQLite write-locked by another connection: create_task gave 503 after "
        f"{create_seconds:.2f} s (busy timeout); a read sent while that write waited took "
        f"{read_wait:.2f} s; reads after it {list_seconds * 1000:.0f} / "
        f"{get_seconds * 1000:.0f} ms"
    )
    # Writes: a clear 503 within the busy timeout (5 s), under the rpc timeout (10 s).
    assert_clear(created, 503, "the database is locked")
    assert 4 < create_seconds < 10
    assert_clear(uploaded, 503, "the database is locked")
    assert_clear(started, 503, "the database is locked")
    # Nothing was half-written: no row of t2, the bundle matches its recorded listing,
    # the task did not start.
    assert rows_after_failure == {"tasks": 0, "task_tags": 0, "task_files": 0}
    assert consistent_while_locked and consistent_after
    assert task_after["running"] is False
    # Reads are served while the lock is held (a read queued behind a waiting write
    # waits with it: the store is synchronous on the service's event loop).
    assert read_while_waiting.status_code == 200
    assert read_wait < create_seconds
    assert listed.status_code == 200 and [t["ID"] for t in listed.json()] == ["t1"]
    assert got.status_code == 200 and list_seconds < 1 and get_seconds < 1
    # After the release, writes work again.
    assert created_after.status_code == 200, created_after.text
    assert uploaded_after.status_code == 200, uploaded_after.text
    assert "Traceback" not in log


@contextlib.contextmanager
def small_file_system(path: Path, size: str = "2m") -> Iterator[None]:
    """A tmpfs of ``size`` mounted on ``path`` (needs root; skips the test otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> int:
    """Write ``path`` until the file system is full; returns the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    written = 0
    try:
        while True:
            written += os.write(fd, b"\0" * 4096)
    except OSError:
        return written
    finally:
        os.close(fd)


async def test_a_full_disk_fails_writes_clearly_keeps_reads_and_corrupts_nothing(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "cloud"
    with small_file_system(data_dir):
        async with cloud_process(data_dir) as cloud:
            # Prepare: a task with its bundle and a few metrics' worth of rows
            db = data_dir / "agata.db"
            await add_task(cloud, "t1", SERVER_PY)
            for i in range(20):
                await cloud.ok("rpc_exec_update_user_info", {"user_id": f"d{i}", "data_qnt": i})
            filler = data_dir / "filler"

            # Execute: the disk fills up
            filled = fill(filler)
            created = await cloud.op("rpc_exec_create_task", new_task("t2"))
            device = await cloud.op("rpc_exec_update_user_info", {"user_id": "new", "data_qnt": 1})
            uploaded = await upload(cloud, "t1", "server.py", b"# v2\n" * 20_000)
            uploaded_new = await upload(cloud, "t1", "data.bin", b"x" * 200_000)
            started = await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})
            listed = await cloud.op("rpc_exec_list_tasks", {})
            got = await cloud.op("rpc_exec_get_task_by_id", {"task_id": "t1"})
            downloaded = await cloud.http.get("/download/t1/server.py")
            health = await cloud.http.get("/healthz")
            consistent_while_full = await bundle_is_consistent(cloud, "t1")
            integrity_while_full = integrity(db)
            rows_while_full = rows_of(db, "t2")

            # Execute: space is freed
            filler.unlink()
            created_after = await cloud.op("rpc_exec_create_task", new_task("t2"))
            uploaded_after = await upload(cloud, "t1", "data.bin", b"x" * 200_000)
            consistent_after = await bundle_is_consistent(cloud, "t1")
            log = cloud.log_text()
        integrity_after = integrity(db)

    print(
        f"\ndisk full (tmpfs of 2 MiB, {filled // 1024} KiB of filler): writes 503, "
        f"uploads {uploaded.status_code}, reads 200; integrity_check: {integrity_while_full}"
    )
    # Writes and uploads fail with a clear error; nothing half-written.
    assert_clear(created, 503, "full")
    assert_clear(device, 503, "full")
    assert_clear(started, 503, "full")
    assert_clear(uploaded, 503, "full")
    assert_clear(uploaded_new, 503, "full")
    assert consistent_while_full and consistent_after
    assert rows_while_full == {"tasks": 0, "task_tags": 0, "task_files": 0}
    # Reads go on.
    assert listed.status_code == 200 and [t["ID"] for t in listed.json()] == ["t1"]
    assert got.status_code == 200 and got.json()["running"] is False
    assert downloaded.status_code == 200 and downloaded.content == SERVER_PY.encode()
    assert health.status_code == 200
    # Nothing corrupted, and writes work again once there is room.
    assert integrity_while_full == "ok" and integrity_after == "ok"
    assert created_after.status_code == 200, created_after.text
    assert uploaded_after.status_code == 200, uploaded_after.text
    assert "Traceback" not in log
