"""AsyncStore against a real SQLite file: calls run off the event loop, reads keep
answering while writes wait for another process's write lock, and the strict mode of
:mod:`agata.store.loop_guard` catches package code calling the store on the loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from agata.cloud.cloud_node import CloudNode
from agata.errors import AgataError, ErrorCode
from agata.settings import load_settings
from agata.store import NewTask, create_store
from agata.store.async_store import AsyncStore
from agata.store.loop_guard import set_strict


async def test_calls_run_in_worker_threads_with_the_store_contract(tmp_path: Path) -> None:
    # Prepare
    store = create_store(f"sqlite:///{tmp_path / 'agata.db'}")
    astore = AsyncStore(store)
    loop_thread = threading.get_ident()
    seen: list[int] = []
    original = store.get_task

    def spy(task_id: str) -> object:
        seen.append(threading.get_ident())
        return original(task_id)

    store.get_task = spy  # type: ignore[method-assign]

    # Execute
    created = await astore.create_task(NewTask("t1", "127.0.0.1", 9, "u", "p"))
    got = await astore.get_task("t1")
    with pytest.raises(AgataError) as missing:
        await astore.get_task("nope")
    await astore.shutdown()
    store.close()

    # Assert: same records and errors as the store, never on the loop's thread
    assert got == created
    assert missing.value.code is ErrorCode.NOT_FOUND
    assert seen and all(ident != loop_thread for ident in seen)


async def test_reads_answer_while_writes_wait_for_another_writer(tmp_path: Path) -> None:
    # Prepare: another connection holds the write lock; one write thread only
    db = tmp_path / "agata.db"
    store = create_store(f"sqlite:///{db}", busy_timeout=2.0)
    store.create_task(NewTask("t1", "127.0.0.1", 9, "u", "p"))
    astore = AsyncStore(store, read_workers=2, write_workers=1)
    holder = sqlite3.connect(db, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    try:
        # Execute: three writes queue up behind the lock; a read and the loop go on
        writes = [
            asyncio.ensure_future(astore.touch_devices(["d1"])),
            asyncio.ensure_future(astore.update_task("t1", host="h2")),
            asyncio.ensure_future(astore.update_task("t1", host="h3")),
        ]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        read = await astore.get_task("t1")
        read_seconds = time.monotonic() - started
        started = time.monotonic()
        await asyncio.sleep(0.01)
        loop_lag = time.monotonic() - started - 0.01
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    results = await asyncio.gather(*writes, return_exceptions=True)
    await astore.shutdown()
    store.close()

    # Assert
    assert read.host == "127.0.0.1"
    assert read_seconds < 1.0 and loop_lag < 0.5
    assert not any(isinstance(r, BaseException) for r in results), results


async def test_strict_mode_refuses_package_code_calling_the_store_on_the_loop(
    tmp_path: Path,
) -> None:
    # Prepare: strict mode is on for every test (tests/conftest.py); a cloud node whose
    # ensure_operator_token is synchronous package code
    settings = load_settings(flags={"data_dir": tmp_path / "cloud"}, environ={})
    node = CloudNode(settings)
    await asyncio.to_thread(lambda: node.store)

    # Execute: on the loop's thread, then in a worker thread
    with pytest.raises(AgataError) as on_loop:
        node.ensure_operator_token()
    token = await asyncio.to_thread(node.ensure_operator_token)
    await asyncio.to_thread(node.store.close)

    # Assert
    assert on_loop.value.code is ErrorCode.INTERNAL
    assert "event loop" in on_loop.value.message
    assert "agata.cloud.cloud_node" in on_loop.value.message
    assert token is not None


def test_without_a_loop_and_without_strict_mode_the_store_is_called_directly(
    tmp_path: Path,
) -> None:
    settings = load_settings(flags={"data_dir": tmp_path / "cloud"}, environ={})
    node = CloudNode(settings)

    sync_token = node.ensure_operator_token()  # no loop in this thread: fine
    set_strict(False)  # the fixture turns it back on afterwards

    async def on_loop_not_strict() -> int:
        return len(node.store.list_operator_tokens())

    tokens = asyncio.run(on_loop_not_strict())
    node.store.close()

    assert sync_token is not None and tokens == 1
