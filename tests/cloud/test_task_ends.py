"""Recording task ends against a real SQLite store: retried while the database refuses
writes (with the event loop free meanwhile), and never written over a newer run.
The same through a whole cloud on a full disk: tests/faults/test_task_end_faults.py."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from agata.cloud.services.task_ends import EndRecorder, TaskEnd
from agata.store.store import NewTask, Store, TaskState
from agata.store.store_factory import create_store


def running_task(store: Store, task_id: str, pgid: int) -> None:
    store.create_task(NewTask(task_id, host="127.0.0.1", port=9, username="u", password="p"))
    store.set_task_state(task_id, running=True, state=TaskState.RUNNING, server_pid=pgid)


class Settled:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.any = asyncio.Event()

    async def __call__(self, end: TaskEnd, written: bool) -> None:
        self.calls.append((end.task_id, written))
        self.any.set()


async def test_an_end_refused_by_a_locked_database_is_retried_without_blocking(
    tmp_path: Path,
) -> None:
    # Prepare: a running task; another connection holds the write lock
    db = tmp_path / "agata.db"
    store = create_store(f"sqlite:///{db}", busy_timeout=1.0)
    running_task(store, "t1", 100)
    settled = Settled()
    recorder = EndRecorder(store, settled, lambda: [])
    recorder.start()
    holder = sqlite3.connect(db, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    try:
        # Execute: the end arrives while the database is locked
        first = await recorder.record(TaskEnd("t1", TaskState.FINISHED, "reported Finished", 100))
        pending = recorder.pending("t1")
        # The loop keeps retrying in a worker thread: the event loop stays free
        lags = []
        for _ in range(40):
            started = time.monotonic()
            await asyncio.sleep(0.02)
            lags.append(time.monotonic() - started - 0.02)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await asyncio.wait_for(settled.any.wait(), 10)
    task = store.get_task("t1")
    await recorder.stop()
    store.close()

    # Assert
    assert first is False and pending is not None
    assert max(lags) < 0.5, lags  # a busy-timeout wait (1 s) never ran on the loop
    assert task.running is False
    assert task.state == TaskState.FINISHED and task.state_reason == "reported Finished"
    assert settled.calls == [("t1", True)]


async def test_an_end_is_never_written_over_a_newer_run(tmp_path: Path) -> None:
    # Prepare: the task runs again, with another process group, before the old end lands
    store = create_store(f"sqlite:///{tmp_path / 'agata.db'}")
    running_task(store, "t1", 200)
    running_task(store, "t2", 300)
    settled = Settled()
    recorder = EndRecorder(store, settled, lambda: [])

    # Execute
    old_run = await recorder.record(TaskEnd("t1", TaskState.FAILED, "old run crashed", 100))
    this_run = await recorder.record(TaskEnd("t2", TaskState.FAILED, "crashed", 300))

    # Assert: the newer run of t1 keeps running; t2's own end is written
    assert old_run is True and this_run is True
    assert store.get_task("t1").running is True
    assert store.get_task("t2").state == TaskState.FAILED
    assert settled.calls == [("t1", False), ("t2", True)]
    store.close()


async def test_the_periodic_reconcile_ends_a_lost_task(tmp_path: Path) -> None:
    # Prepare: the owner reports a claimed task whose process is gone
    store = create_store(f"sqlite:///{tmp_path / 'agata.db'}")
    running_task(store, "t1", 100)
    lost = [TaskEnd("t1", TaskState.STOPPED, "its server side is gone")]
    settled = Settled()
    recorder = EndRecorder(store, settled, lambda: lost, reconcile_seconds=0.05)

    # Execute: the loop runs with no end reported to it
    recorder.start()
    await asyncio.wait_for(settled.any.wait(), 5)
    lost = []
    await recorder.stop()

    # Assert
    task = store.get_task("t1")
    assert task.running is False and task.state_reason == "its server side is gone"
    assert settled.calls == [("t1", True)]
    store.close()
