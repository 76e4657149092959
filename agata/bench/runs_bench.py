"""``agata bench runs``: reading runs of a task with a long history.

A real cloud in this process (``memory://``, SQLite in a temporary folder, or
PostgreSQL with ``--db``) holding one task with ``--runs`` runs (1,000 by default) and
``--metrics`` metric rows (100,000) spread over them, with a few devices' parts per run,
written straight into the store in a few transactions (only the reads are measured). An
operator client times, warm, through the HTTP gateway:

- ``rpc_exec_list_runs`` of the task (its newest runs),
- ``rpc_exec_get_run`` of runs picked at random (with their devices),
- ``rpc_exec_get_task_metrics`` of one run (no target: its size is the run's),

and — the limit, in the same run, through the same gateway and client —
``rpc_exec_get_task_by_id`` of the same task. Target (issue 11): list_runs and get_run
p50 <= 3x the limit's.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, update

from agata.bench.report import BenchReport, percentile
from agata.store import sql_schema as schema
from agata.store.store import BundleFile, NewTask, Store

#: Issue 11: list_runs and get_run p50 <= this times rpc_exec_get_task_by_id's.
TARGET_RATIO = 3.0
TASK_ID = "long-history"
DEVICES_PER_RUN = 5


def insert_history(store: Store, runs: int, metrics: int, *, seed: int = 11) -> None:
    """Give the task ``TASK_ID`` ``runs`` ended runs and ``metrics`` metric rows (the
    server's and its devices', round by round), in chunks of one transaction each."""
    engine = store.engine  # type: ignore[attr-defined]
    rng = random.Random(seed)
    task = store.get_task(TASK_ID)
    files = [[f.name, f.size, f.sha256] for f in task.files]
    start = datetime.now(UTC) - timedelta(days=runs)
    per_run = max(1, metrics // runs)
    for first in range(1, runs + 1, 100):
        run_rows: list[dict[str, Any]] = []
        device_rows: list[dict[str, Any]] = []
        metric_rows: list[dict[str, Any]] = []
        for run in range(first, min(runs, first + 99) + 1):
            began = start + timedelta(days=run - 1)
            rounds = per_run // (DEVICES_PER_RUN + 1) or 1
            run_rows.append(
                {
                    "task_id": TASK_ID,
                    "run": run,
                    "state": "finished",
                    "reason": "Finished",
                    "server_arguments": ["--rounds", str(rounds)],
                    "client_arguments": [],
                    "bundle_version": task.version,
                    "files": files,
                    "min_devices": 0,
                    "start_deadline_s": None,
                    "created_at": began,
                    "started_at": began,
                    "ended_at": began + timedelta(minutes=30),
                    "last_round": rounds,
                    "last_metrics": {"acc": rng.random(), "loss": rng.random()},
                    "last_source": "server",
                    "devices_joined": DEVICES_PER_RUN,
                }
            )
            for d in range(DEVICES_PER_RUN):
                device_rows.append(
                    {
                        "task_id": TASK_ID,
                        "run": run,
                        "user_id": f"dev-{d}",
                        "status": "finished",
                        "reason": "",
                        "joined_at": began,
                        "last_round": rounds,
                        "updated_at": began,
                    }
                )
            for n in range(per_run):
                source = (
                    "server"
                    if n % (DEVICES_PER_RUN + 1) == 0
                    else f"dev-{n % (DEVICES_PER_RUN + 1) - 1}"
                )
                metric_rows.append(
                    {
                        "task_id": TASK_ID,
                        "run": run,
                        "round": n // (DEVICES_PER_RUN + 1),
                        "source": source,
                        "metrics": {"acc": rng.random()},
                        "time": began.timestamp() + n,
                    }
                )
        with engine.begin() as conn:
            conn.execute(insert(schema.runs), run_rows)
            conn.execute(insert(schema.run_devices), device_rows)
            conn.execute(insert(schema.metrics), metric_rows)
    with engine.begin() as conn:
        conn.execute(
            update(schema.tasks)
            .where(schema.tasks.c.task_id == TASK_ID)
            .values(run=runs, state="finished", state_reason="Finished")
        )


async def _measure(runs: int, metrics: int, samples: int, db_url: str) -> dict[str, list[float]]:
    from agata.cloud.cloud_node import CloudNode
    from agata.cloud.credentials.tokens import OPERATOR_PREFIX, hash_token, new_token
    from agata.settings import load_settings

    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="agata-bench-") as tmp:
        flags: dict[str, Any] = {"data_dir": Path(tmp), "gateway_port": 0}
        if db_url:
            flags["db_url"] = db_url
        node = CloudNode(load_settings(flags=flags, environ={}))
        await node.start()
        try:
            store = node.store
            store.create_task(
                NewTask(
                    TASK_ID,
                    host="127.0.0.1",
                    port=8080,
                    username="",
                    password="",
                    files=[
                        BundleFile("server.py", 100, "a" * 64),
                        BundleFile("client.py", 100, "b" * 64),
                    ],
                )
            )
            for d in range(DEVICES_PER_RUN):
                store.upsert_device(f"dev-{d}")
            insert_history(store, runs, metrics)
            token = new_token(OPERATOR_PREFIX)
            store.add_operator_token("bench", hash_token(token))
            headers = {"Authorization": f"Bearer {token}"}
            rng = random.Random(3)
            async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:

                def call(name: str, body: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
                    return lambda: http.post(f"/{name}", json=body, headers=headers)

                async def timed(key: str, make: Callable[[], Callable[[], Awaitable[Any]]]) -> None:
                    for i in range(samples + 5):
                        request = make()
                        t0 = time.perf_counter()
                        response = await request()
                        elapsed = time.perf_counter() - t0
                        if response.status_code != 200:
                            raise RuntimeError(f"{key}: {response.status_code} {response.text}")
                        if i >= 5:  # warm
                            out.setdefault(key, []).append(elapsed)

                task = {"task_id": TASK_ID}
                # Interleaved rounds, so a slower moment of the machine hits every figure.
                for _ in range(4):
                    await timed("get_task", lambda: call("rpc_exec_get_task_by_id", task))
                    await timed("list_runs", lambda: call("rpc_exec_list_runs", task))
                    await timed(
                        "get_run",
                        lambda: call("rpc_exec_get_run", {**task, "run": rng.randint(1, runs)}),
                    )
                await timed(
                    "metrics",
                    lambda: call("rpc_exec_get_task_metrics", {**task, "run": runs // 2}),
                )
        finally:
            await node.stop()
    return out


def run_runs_bench(
    runs: int = 1000, metrics: int = 100_000, samples: int = 50, db_url: str = ""
) -> BenchReport:
    """Measure and report (see the module docstring)."""
    samples_by_key = asyncio.run(_measure(runs, metrics, samples, db_url))
    backend = db_url.split("@")[-1] if db_url else "sqlite (temporary file)"
    report = BenchReport(f"runs of a task with {runs:,} runs and {metrics:,} metric rows")
    report.context = {
        "store": backend,
        "runs": runs,
        "metrics": metrics,
        "samples": {k: len(v) for k, v in samples_by_key.items()},
    }
    limit = percentile(samples_by_key["get_task"], 50) * 1000
    for key, name in (
        ("list_runs", "rpc_exec_list_runs p50"),
        ("get_run", "rpc_exec_get_run p50"),
    ):
        values = samples_by_key[key]
        report.ratio(
            name,
            percentile(values, 50) * 1000,
            limit,
            "ms",
            limit_name="rpc_exec_get_task_by_id p50",
            at_most=TARGET_RATIO,
            note=f"p95 {percentile(values, 95) * 1000:.2f} ms, n={len(values)}",
        )
    values = samples_by_key["metrics"]
    report.ratio(
        f"rpc_exec_get_task_metrics p50 (one run, {metrics // runs} rows)",
        percentile(values, 50) * 1000,
        limit,
        "ms",
        limit_name="rpc_exec_get_task_by_id p50",
        note="no target",
    )
    return report
