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
    # Reads are served while the lock is held, also while a write waits for it (the
    # write waits in a worker thread of its own, not on the event loop).
    assert read_while_waiting.status_code == 200
    assert read_wait < 1
    assert listed.status_code == 200 and [t["ID"] for t in listed.json()] == ["t1"]
    assert got.status_code == 200 and list_seconds < 1 and get_seconds < 1
    # After the release, writes work again.
    assert created_after.status_code == 200, created_after.text
    assert uploaded_after.status_code == 200, uploaded_after.text
    assert "Traceback" not in log


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def test_healthz_polls_and_reads_answer_while_another_process_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    # Prepare: a cloud with a task and a device; another process's connection will hold
    # SQLite's write lock for 3 s (under the busy timeout of 5 s)
    async with cloud_process(tmp_path / "cloud") as cloud:
        db = cloud.data_dir / "agata.db"
        await add_task(cloud, "t1", SERVER_PY)
        await cloud.ok("rpc_exec_update_user_info", {"user_id": "d1", "data_qnt": 10})
        holder = sqlite3.connect(db, isolation_level=None, timeout=0)
        holder.execute("BEGIN IMMEDIATE")
        held = time.monotonic()
        health: list[float] = []
        polls: list[float] = []
        reads: list[float] = []
        try:
            # Execute: a write that must wait for the lock, and meanwhile /healthz every
            # 20 ms, a device's poll and a read every 200 ms
            write = asyncio.create_task(
                timed(cloud.op("rpc_exec_update_user_info", {"user_id": "d1", "data_qnt": 11}))
            )
            await asyncio.sleep(0.2)  # the write is waiting for the lock now
            while time.monotonic() - held < 3.0:
                answer, seconds = await timed(cloud.http.get("/healthz"))
                assert answer.status_code == 200
                health.append(seconds)
                if len(health) % 10 == 1:
                    poll, poll_seconds = await timed(
                        cloud.op("rpc_exec_client_requesting_task", {"user_id": "d1"})
                    )
                    read, read_seconds = await timed(
                        cloud.op("rpc_exec_get_task_by_id", {"task_id": "t1"})
                    )
                    assert poll.status_code == 200 and read.status_code == 200, (poll, read)
                    polls.append(poll_seconds)
                    reads.append(read_seconds)
                await asyncio.sleep(0.02)
            write_done_while_held = write.done()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        written, write_seconds = await write
        device = await cloud.ok("rpc_exec_get_user_info", {"user_id": "d1"})

    p99 = percentile(health, 0.99)
    print(
        f"\nSQLite write lock held 3 s by another process: /healthz p50 "
        f"{percentile(health, 0.5) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max "
        f"{max(health) * 1000:.1f} ms ({len(health)} requests; target p99 <= 50 ms); device "
        f"poll max {max(polls) * 1000:.0f} ms, read max {max(reads) * 1000:.0f} ms "
        f"({len(polls)} each); the write waited {write_seconds:.2f} s and answered "
        f"{written.status_code}"
    )
    # The event loop never waited for the lock: before, every request stalled until the
    # waiting write got it (~3 s). Bounds are loose for a loaded machine; the figure
    # printed above is what docs/benchmarks.md records.
    assert max(health) < 1.0, sorted(health)[-5:]
    assert max(polls) < 1.0 and max(reads) < 1.0, (polls, reads)
    # The write waited for the lock (it cannot finish while it is held) and then took.
    assert not write_done_while_held
    assert written.status_code == 200, written.text
    assert 2.5 < write_seconds < 5.5
    assert device["data_qnt"] == 11


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
