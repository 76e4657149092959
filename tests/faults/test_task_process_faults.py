"""Hostile server sides of tasks, run by a real cloud process: a 100 MB flood of
stdout/stderr, an immediate exit, invalid JSON lines, and SIGTERM ignored on stop."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from faults.harness import (
    add_task,
    cloud_process,
    eventually,
    live_processes,
    pid_alive,
    task_ended,
)

FLOOD_MB = 100

#: Half the flood on stdout in 8 KiB lines (each one a log line for the store), half on
#: stderr in 1 MiB lines (each cut to 16 KiB by the supervisor), then "Finished".
FLOOD_SERVER_PY = """
import sys
from agata.runtime import TaskReporter
reporter = TaskReporter()
half = int(sys.argv[2]) * 1024 * 1024 // 2
out, err = sys.stdout.buffer, sys.stderr.buffer
short, long = b"o" * 8191 + b"\\n", b"e" * (1024 * 1024 - 1) + b"\\n"
sent = 0
while sent < half:
    out.write(short)
    sent += len(short)
    if sent % len(long) < len(short):
        err.write(long)
out.flush()
err.flush()
reporter.send_metrics(1, acc=0.5)
reporter.finished()
"""

EXIT_AT_ONCE_PY = """
import sys
sys.stderr.write("cannot even start\\n")
sys.exit(3)
"""

INVALID_JSON_PY = r"""
import sys
from agata.runtime import TaskReporter
reporter = TaskReporter()
out = sys.stdout.buffer
for line in [
    b'{not json',
    b'{"type": "model", "round": "abc", "acc": 1}',
    b'{"type": "model", "round": 2, "acc": "NaN"}',
    b'[1, 2, 3]',
    b'"just a string"',
    b'{"type": "no-such-type"}',
    b'{"type": "info"}',
    b'\xff\xfe\x00 binary junk \x1b[31m red \x1b[0m',
    b'{"type": "model", "round": 1, "acc": 0.75}',
]:
    out.write(line + b"\n")
out.flush()
reporter.finished()
"""

STUBBORN_PY = """
import signal, sys, time
from agata.runtime import TaskReporter
signal.signal(signal.SIGTERM, signal.SIG_IGN)
TaskReporter()
time.sleep(600)
"""

GRACE_SECONDS = 1.0
ENV = {"AGATA_SERVER_GRACE_SECONDS": str(GRACE_SECONDS)}


def stored_log_lines(db: Path, task_id: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT count(*) FROM log_lines WHERE task_id = ?", (task_id,))
        return int(row.fetchone()[0])


async def test_a_100_mb_flood_keeps_the_cloud_responsive_and_its_memory_bounded(
    tmp_path: Path,
) -> None:
    # Prepare
    async with cloud_process(tmp_path / "cloud", env=ENV) as cloud:
        await add_task(cloud, "flood", FLOOD_SERVER_PY, [str(FLOOD_MB)])
        await cloud.ok("rpc_exec_list_tasks", {})
        rss_before = cloud.rss_mb()

        # Execute: the flood, while an operator keeps reading and writing
        started = time.monotonic()
        await cloud.ok("rpc_exec_start_server_task", {"task_id": "flood"})
        latencies: list[float] = []
        rss_peak = rss_before
        n = 0
        while True:
            t0 = time.monotonic()
            task = await cloud.ok("rpc_exec_get_task_by_id", {"task_id": "flood"})
            latencies.append(time.monotonic() - t0)
            if n % 5 == 0:  # a write too
                t0 = time.monotonic()
                await cloud.ok("rpc_exec_update_user_info", {"user_id": "d", "data_qnt": n})
                latencies.append(time.monotonic() - t0)
            rss_peak = max(rss_peak, cloud.rss_mb())
            if not task["running"]:
                break
            assert time.monotonic() - started < 60, "the flood did not end"
            n += 1
            await asyncio.sleep(0.1)
        flood_seconds = time.monotonic() - started
        rss_after = cloud.rss_mb()
        logs = await cloud.ok("rpc_exec_get_task_logs", {"task_id": "flood", "limit": 5})
        metrics = await cloud.ok("rpc_exec_get_task_metrics", {"task_id": "flood"})
        kept = stored_log_lines(cloud.data_dir / "agata.db", "flood")

    # Assert
    print(
        f"\n{FLOOD_MB} MB flood through the cloud: {flood_seconds:.1f} s; "
        f"{len(latencies)} operations during it, slowest {max(latencies) * 1000:.0f} ms; "
        f"cloud RSS {rss_before:.0f} MB before, {rss_peak:.0f} MB peak, {rss_after:.0f} MB "
        f"after; {kept} log lines kept"
    )
    assert task["state"] == "finished", task["state_reason"]
    assert metrics[0]["round"] == 1
    assert max(latencies) < 1.0
    assert rss_peak - rss_before < 64
    assert kept <= 5000  # the store's cap per task
    assert logs[-1]["text"] == "Finished"
    assert any(line["text"].endswith("…[truncated]") for line in logs) or all(
        len(line["text"]) <= 16 * 1024 + 20 for line in logs
    )


async def test_a_server_side_that_exits_at_once_fails_with_the_reason(tmp_path: Path) -> None:
    async with cloud_process(tmp_path / "cloud", env=ENV) as cloud:
        await add_task(cloud, "quick", EXIT_AT_ONCE_PY)

        await cloud.ok("rpc_exec_start_server_task", {"task_id": "quick"})
        task = await eventually(lambda: task_ended(cloud, "quick"), what="task ended")
        again = await cloud.op("rpc_exec_start_server_task", {"task_id": "quick"})
        await eventually(lambda: task_ended(cloud, "quick"), what="task ended again")
        logs = await cloud.ok("rpc_exec_get_task_logs", {"task_id": "quick"})

    assert task["state"] == "failed"
    assert task["state_reason"] == "exited with code 3: cannot even start"
    assert again.status_code == 200  # not left marked running
    assert any("cannot even start" in line["text"] for line in logs)


async def test_invalid_json_lines_are_logged_and_the_task_finishes(tmp_path: Path) -> None:
    async with cloud_process(tmp_path / "cloud", env=ENV) as cloud:
        await add_task(cloud, "junk", INVALID_JSON_PY)

        await cloud.ok("rpc_exec_start_server_task", {"task_id": "junk"})
        task = await eventually(lambda: task_ended(cloud, "junk"), what="task ended")
        metrics = await cloud.ok("rpc_exec_get_task_metrics", {"task_id": "junk"})
        logs = await cloud.ok("rpc_exec_get_task_logs", {"task_id": "junk"})
        log = cloud.log_text()

    assert task["state"] == "finished", task["state_reason"]
    # A round of "NaN" keeps the round, without the metric that is not a finite number.
    assert [(m["round"], m["metrics"]) for m in metrics] == [(1, {"acc": 0.75}), (2, {})]
    texts = [line["text"] for line in logs if line["stream"] == "stdout"]
    assert "{not json" in texts
    assert '{"type": "no-such-type"}' in texts
    assert any("binary junk" in t and "\x1b" not in t for t in texts)
    assert "Traceback" not in log


async def test_a_server_side_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    marker = f"--stubborn-{tmp_path.name}"
    async with cloud_process(tmp_path / "cloud", env=ENV) as cloud:
        await add_task(cloud, "stubborn", STUBBORN_PY, [marker])
        await cloud.ok("rpc_exec_start_server_task", {"task_id": "stubborn"})
        [pid] = await eventually(lambda: live_processes(marker), what="server side started")
        await asyncio.sleep(0.3)  # let it install its handler

        started = time.monotonic()
        await cloud.ok("rpc_exec_stop_server_task", {"task_id": "stubborn"})
        stop_seconds = time.monotonic() - started
        left = live_processes(marker)
        task = await cloud.ok("rpc_exec_get_task_by_id", {"task_id": "stubborn"})

    print(f"\nstop of a server ignoring SIGTERM: {stop_seconds:.2f} s (grace {GRACE_SECONDS:g} s)")
    assert GRACE_SECONDS <= stop_seconds < GRACE_SECONDS + 2
    assert left == [] and not pid_alive(pid)
    assert task["running"] is False and task["state"] == "stopped"
