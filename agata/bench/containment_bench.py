"""``agata bench containment``: what containment adds to starting a task side.

Each round starts the same one-line task twice, once with a bare
:class:`~agata.runtime.process.AsyncioProcessLauncher` (a process group, PDEATHSIG: the
limit) and once with the containment this machine allows, plus the task user when
running as root — alternating, so load drifts hit both alike. Two figures per variant:
``start()`` returning (the spawn) and the first line of output arriving (the process
runs). The target (issue 13) is the difference of the medians, at most 10 ms.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from agata.bench.report import BenchReport
from agata.runtime.containment import detect_containment
from agata.runtime.limits import Limits
from agata.runtime.messages import TaskMessage
from agata.runtime.process import AsyncioProcessLauncher, ProcessLauncher
from agata.runtime.supervisor import TaskProcess
from agata.runtime.task_user import DEFAULT_TASK_USER, resolve_task_user

__all__ = ["run_containment_bench"]

_TASK = "print('up', flush=True)\n"
TARGET_MS = 10.0


async def _one(
    bundle: Path, launcher: ProcessLauncher, limits: Limits | None
) -> tuple[float, float]:
    """(ms until ``start()`` returned, ms until the first line arrived)."""
    first = asyncio.Event()

    async def on_message(_message: TaskMessage) -> None:
        first.set()

    task = TaskProcess(
        bundle, "task.py", on_message=on_message, launcher=launcher, limits=limits,
        require_finished=False,
    )  # fmt: skip
    began = time.perf_counter()
    await task.start()
    spawned = time.perf_counter()
    await asyncio.wait_for(first.wait(), 30)
    running = time.perf_counter()
    await task.wait()
    return (spawned - began) * 1000, (running - began) * 1000


def _prepare(bundle: Path) -> None:
    (bundle / "task.py").write_text(_TASK)
    bundle.chmod(0o755)  # the task user must reach the script


async def _measure(rounds: int) -> BenchReport:
    report = BenchReport("containment: spawn with and without")
    with tempfile.TemporaryDirectory() as folder:
        bundle = Path(folder)
        _prepare(bundle)
        containment = detect_containment(
            f"bench:{folder}", task_user=resolve_task_user(DEFAULT_TASK_USER)
        )
        report.context["containment"] = containment.describe()
        bare = AsyncioProcessLauncher()
        contained = AsyncioProcessLauncher(containment=containment)
        limits = Limits(pids=512, memory_mb=512, open_files=1024)
        samples: dict[str, list[tuple[float, float]]] = {"bare": [], "contained": []}
        await _one(bundle, bare, None)  # warm the page cache
        for _ in range(rounds):
            samples["bare"].append(await _one(bundle, bare, None))
            samples["contained"].append(await _one(bundle, contained, limits))
    medians = {
        name: (
            statistics.median(s for s, _ in pairs),
            statistics.median(r for _, r in pairs),
        )
        for name, pairs in samples.items()
    }
    for name, (spawn, run) in medians.items():
        report.add(f"{name}: start() returns (median)", round(spawn, 2), "ms")
        report.add(f"{name}: first output line (median)", round(run, 2), "ms")
    report.add(
        "containment adds to the spawn",
        round(medians["contained"][0] - medians["bare"][0], 2),
        "ms",
        at_most=TARGET_MS,
    )
    report.add(
        "containment adds until the task runs",
        round(medians["contained"][1] - medians["bare"][1], 2),
        "ms",
        at_most=TARGET_MS,
        note=f"{rounds} rounds, alternating; same run",
    )
    return report


def run_containment_bench(rounds: int = 30) -> BenchReport:
    return asyncio.run(_measure(rounds))
