"""The store for ``async def`` code: every :class:`Store` method, awaited in a worker thread.

Services and the gateway run on one asyncio event loop; a :class:`Store` call blocks
(SQLite waits up to ``busy_timeout`` for another writer, PostgreSQL for the network).
:class:`AsyncStore` wraps one :class:`Store` and runs each call in a bounded thread
pool, so the loop keeps serving while the database works or waits:

- Reads and writes have pools of their own (``read_workers``, ``write_workers``): writes
  stuck behind another process's SQLite write lock cannot take every thread, so reads
  keep answering meanwhile (they never wait for a writer under WAL).
- Each method has the :class:`Store` method's name, arguments, result, errors and
  contract (its docstring is the store's); it is one transaction, as there.
- The engine's connection pool must hold at least ``read_workers + write_workers``
  connections (:func:`agata.store.store_factory.create_store` sizes it so).
- A call that is cancelled while it runs finishes in its thread; its result is dropped.

Why threads and not an async driver: docs/store.md ("Calling the store from a service").
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, ParamSpec, TypeVar

from agata.store.store import Store

__all__ = ["DEFAULT_READ_WORKERS", "DEFAULT_WRITE_WORKERS", "AsyncStore", "as_async"]

DEFAULT_READ_WORKERS = 8
"""Threads that run reads at once."""
DEFAULT_WRITE_WORKERS = 4
"""Threads that run writes at once (SQLite runs one writer at a time anyway)."""

P = ParamSpec("P")
R = TypeVar("R")


def _read(
    method: Callable[Concatenate[Store, P], R],
) -> Callable[Concatenate[AsyncStore, P], Awaitable[R]]:
    return _delegate(method, write=False)


def _write(
    method: Callable[Concatenate[Store, P], R],
) -> Callable[Concatenate[AsyncStore, P], Awaitable[R]]:
    return _delegate(method, write=True)


def _delegate(
    method: Callable[Concatenate[Store, P], R], *, write: bool
) -> Callable[Concatenate[AsyncStore, P], Awaitable[R]]:
    name = method.__name__

    @functools.wraps(method)
    async def call(self: AsyncStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        bound: Callable[P, R] = getattr(self.sync, name)
        pool = self._writes if write else self._reads
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, functools.partial(bound, *args, **kwargs))

    return call


class AsyncStore:
    """One :class:`Store`, awaited (module docstring). Build one per process and pass it
    to every service; :attr:`sync` is the wrapped store for code without a loop."""

    def __init__(
        self,
        store: Store,
        *,
        read_workers: int = DEFAULT_READ_WORKERS,
        write_workers: int = DEFAULT_WRITE_WORKERS,
    ) -> None:
        if read_workers < 1 or write_workers < 1:
            raise ValueError("an AsyncStore needs at least one read and one write worker")
        self.sync = store
        self._reads = ThreadPoolExecutor(read_workers, thread_name_prefix="store-read")
        self._writes = ThreadPoolExecutor(write_workers, thread_name_prefix="store-write")

    async def run(self, work: Callable[[Store], R], *, write: bool = True) -> R:
        """Run ``work(store)`` in a worker thread: several calls that belong together
        (each still its own transaction) for one hop to a thread."""
        loop = asyncio.get_running_loop()
        pool = self._writes if write else self._reads
        return await loop.run_in_executor(pool, work, self.sync)

    async def shutdown(self) -> None:
        """Wait for the calls under way and stop the threads (the store stays open)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._reads.shutdown(wait=True)
        self._writes.shutdown(wait=True)

    # -- tasks ---------------------------------------------------------------------------
    create_task = _write(Store.create_task)
    get_task = _read(Store.get_task)
    list_tasks = _read(Store.list_tasks)
    list_running_tasks = _read(Store.list_running_tasks)
    task_progress = _read(Store.task_progress)
    update_task = _write(Store.update_task)
    set_task_state = _write(Store.set_task_state)
    set_task_files = _write(Store.set_task_files)
    delete_task = _write(Store.delete_task)

    # -- devices -------------------------------------------------------------------------
    upsert_device = _write(Store.upsert_device)
    get_device = _read(Store.get_device)
    list_devices = _read(Store.list_devices)
    query_devices = _read(Store.query_devices)
    delete_device = _write(Store.delete_device)
    touch_device = _write(Store.touch_device)
    touch_devices = _write(Store.touch_devices)
    find_device_by_credential_hash = _read(Store.find_device_by_credential_hash)
    set_device_credential = _write(Store.set_device_credential)
    claim_device_credential = _write(Store.claim_device_credential)
    set_device_task_status = _write(Store.set_device_task_status)
    list_device_tasks = _read(Store.list_device_tasks)
    list_task_devices = _read(Store.list_task_devices)
    device_task_states = _read(Store.device_task_states)
    list_device_failures = _read(Store.list_device_failures)
    clear_quarantine = _write(Store.clear_quarantine)

    # -- events, metrics, logs -----------------------------------------------------------
    add_event = _write(Store.add_event)
    add_events = _write(Store.add_events)
    list_events = _read(Store.list_events)
    add_metric = _write(Store.add_metric)
    list_metrics = _read(Store.list_metrics)
    add_log_lines = _write(Store.add_log_lines)
    tail_logs = _read(Store.tail_logs)

    # -- runs ----------------------------------------------------------------------------
    create_run = _write(Store.create_run)
    start_queued_run = _write(Store.start_queued_run)
    set_run_waiting_done = _write(Store.set_run_waiting_done)
    get_run = _read(Store.get_run)
    list_runs = _read(Store.list_runs)
    list_queued_runs = _read(Store.list_queued_runs)
    count_started_runs = _read(Store.count_started_runs)
    list_run_devices = _read(Store.list_run_devices)
    add_artifact = _write(Store.add_artifact)
    get_artifact = _read(Store.get_artifact)

    # -- tokens --------------------------------------------------------------------------
    add_operator_token = _write(Store.add_operator_token)
    find_operator_token_by_hash = _read(Store.find_operator_token_by_hash)
    list_operator_tokens = _read(Store.list_operator_tokens)
    revoke_operator_token = _write(Store.revoke_operator_token)
    add_enrollment_token = _write(Store.add_enrollment_token)
    consume_enrollment_token = _write(Store.consume_enrollment_token)
    list_enrollment_tokens = _read(Store.list_enrollment_tokens)
    revoke_enrollment_token = _write(Store.revoke_enrollment_token)


def as_async(store: Store | AsyncStore) -> AsyncStore:
    """``store`` itself if it is an :class:`AsyncStore`, else a new one around it (with
    threads of its own: a process should build one and pass it everywhere)."""
    return store if isinstance(store, AsyncStore) else AsyncStore(store)
