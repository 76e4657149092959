"""``agata demo``: experiment 1 on this machine, one command, with live progress.

The cloud (memory bus, SQLite in a temporary or given folder) and the edge agent run in
this process, on free loopback ports (the gateway's and the Flower server's), so two
demos at once never collide. Every task process is stopped on the way out, also on
Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agata.demo.experiment import ExperimentOptions, RunResult, run_exp1
from agata.demo.harness import Lab
from agata.demo.processes import cancel_on_signals, marked_environment
from agata.demo.timings import EXP1_STEPS, format_seconds

#: The whole demo should end within this on a machine of this kind (3 rounds, 2 clients).
DEMO_TARGET_SECONDS = 30.0

#: What the demo says about its step times. Each is ONE cold sample: the first request on
#: a fresh connection, imports on first use, Flower starting on both cores. A single
#: cold sample supports no verdict against a p50 target, so the demo gives none.
COLD_SAMPLE_NOTE = (
    "Each time is one cold sample (first calls, while Flower starts on both cores), "
    "shown as measured. Step targets are medians of warm samples: "
    "`agata bench cloud` (steps 1-5) and `agata bench edge` (step 6, dispatch) measure them."
)


def demo_json(result: RunResult, wall: float) -> dict[str, Any]:
    """The demo's JSON: the run's figures (``steps``: one cold sample each, no verdict)."""
    data = result.to_json()
    data["samples_per_step"] = 1
    data["finished"] = result.ok and result.cloud_state.get(result.task_ids["task"]) == "finished"
    data["demo_wall_seconds"] = wall
    data["demo_target_seconds"] = DEMO_TARGET_SECONDS
    data["dispatch_latency_seconds"] = result.durations.get("dispatch")
    return data


def render_table(console: Console, data: dict[str, Any]) -> None:
    """The step times as measured (one cold sample each), the accuracy, the wall time.

    The only verdict is on the whole demo's wall time, which is a single figure by
    nature; the steps get none (see :data:`COLD_SAMPLE_NOTE`).
    """
    table = Table(title="experiment 1: timed steps (one cold run)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("step")
    table.add_column("measured (1 cold sample)", justify="right")
    numbered = {s.key: str(i) for i, s in enumerate(EXP1_STEPS, 1)}
    for step in data["steps"]:
        table.add_row(numbered.get(step["key"], "-"), step["name"], format_seconds(step["seconds"]))
    console.print(table)
    console.print(f"[dim]{COLD_SAMPLE_NOTE}[/]")
    acc = data.get("accuracy")
    wall = data["demo_wall_seconds"]
    verdict = "[green]ok[/]" if wall <= DEMO_TARGET_SECONDS else "[yellow]over[/]"
    console.print(
        f"final accuracy: [bold]{acc:.4f}[/] after {data.get('rounds')} rounds"
        if acc is not None
        else "final accuracy: n/a"
    )
    console.print(f"whole demo: {wall:.1f} s (target <= {DEMO_TARGET_SECONDS:g} s) {verdict}")


def run_demo(
    *,
    rounds: int = 3,
    data_dir: Path | None = None,
    keep_running: bool = False,
    as_json: bool = False,
    timeout: float = 120.0,
    task_dir: Path | None = None,
    task: str = "digits",
) -> int:
    """Run the demo; returns the process exit code (0 when the task finished).
    ``task``: ``digits`` (the script task) or ``digits-app`` (the Flower App,
    :mod:`agata.demo.flower_demo`)."""
    console = Console(stderr=as_json, highlight=False)
    options = ExperimentOptions(
        rounds=rounds, data_dir=data_dir, timeout=timeout, task_dir=task_dir
    )
    started = time.monotonic()
    status = console.status("starting the cloud...", spinner="dots")
    outcome: dict[str, Any] = {}

    def progress(message: str) -> None:
        console.print(f"[dim]{time.monotonic() - started:6.2f} s[/]  {message}")
        status.update(message)

    def report(result: RunResult) -> dict[str, Any]:
        data = demo_json(result, time.monotonic() - started)
        outcome["data"] = data
        if result.error:
            console.print(f"[red]the demo failed:[/] {result.error}")
        if as_json:
            sys.stdout.write(json.dumps(data, indent=2) + "\n")
            sys.stdout.flush()
        else:
            render_table(console, data)
        return data

    async def keep(lab: Lab, result: RunResult) -> None:
        status.stop()
        report(result)
        console.print(f"\nweb console: [bold]{lab.url}/ui/[/]")
        console.print(f"operator token: [bold]{lab.token}[/]")
        console.print("the cloud and the agent keep running; press Ctrl-C to stop them.")
        await asyncio.Event().wait()

    async def main() -> RunResult:
        cancel_on_signals()
        if task == "digits-app":
            from agata.demo.flower_demo import run_exp1_app

            return await run_exp1_app(options, progress)
        return await run_exp1(options, progress, after=keep if keep_running else None)

    with marked_environment():
        try:
            with status:
                result = asyncio.run(main())
        except (KeyboardInterrupt, asyncio.CancelledError):
            if "data" in outcome:  # --keep-running, stopped by the user after the run
                console.print("stopped; every process of the demo has ended")
                return 0 if outcome["data"]["finished"] else 1
            console.print("interrupted: every process of the demo has ended")
            return 130
    data = report(result)
    return 0 if data["finished"] else 1
