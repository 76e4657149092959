"""``agata experiment exp1|exp2 --runs N``: repeated runs, their files and their summary.

Output folder (``--out``, default ``experiments-out/<exp>-<date>``)::

    run-01/events.json      every component's events of run 1, in time order
    run-01/result.json      the run's figures (steps, accuracy, states, ports)
    ...
    exp1_raw_times          the original's format, one block per run (see below)
    exp1_raw_times.tsv      one line per run: run number, then each step in seconds
    summary.json            per step: n, mean, 95% CI half-width, median, min, max
    timeline.png            when each step ran in each run, and the durations per run
                            (needs matplotlib: the plots extra; without it, a note)

``exp*_raw_times`` is what the original's ``experiments/exp_stats.py`` reads: per run a
``---- RESULTS ----`` line, then ``<label> = <seconds> seconds`` for each step, with the
original's labels (``Not found`` when a step is missing from the run's events).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from agata.demo.experiment import (
    ExperimentOptions,
    RunResult,
    raw_block,
    run_exp1,
    run_exp2,
    write_run,
)
from agata.demo.harness import Progress
from agata.demo.processes import cancel_on_signals
from agata.demo.timings import (
    EXP1_EXTRA,
    EXP1_STEPS,
    EXP2_EXTRA,
    EXP2_STEPS,
    Step,
    Summary,
    raw_times_header,
    raw_times_row,
    summarize,
)

EXPERIMENTS = ("exp1", "exp2")

logger = logging.getLogger(__name__)


def steps_of(experiment: str) -> tuple[Step, ...]:
    return EXP1_STEPS + EXP1_EXTRA if experiment == "exp1" else EXP2_STEPS + EXP2_EXTRA


async def run_one(experiment: str, options: ExperimentOptions, progress: Progress) -> RunResult:
    cancel_on_signals()
    if experiment == "exp1":
        return await run_exp1(options, progress)
    return await run_exp2(options, progress)


def run_series(
    experiment: str,
    runs: int,
    options: ExperimentOptions,
    out: Path,
    progress: Progress,
    on_run: Callable[[int, RunResult], None] | None = None,
) -> tuple[list[RunResult], dict[str, Summary]]:
    """Run ``runs`` runs one after the other (a fresh cloud and device each), writing the
    files as they come, so an interrupted series keeps the runs already done."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}")
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"{experiment}_raw_times"
    table = out / f"{experiment}_raw_times.tsv"
    raw.write_text("")
    steps = steps_of(experiment)
    table.write_text(raw_times_header(steps))
    results: list[RunResult] = []
    for number in range(1, runs + 1):
        run_options = options
        if options.data_dir is not None:
            run_options = replace(options, data_dir=options.data_dir / f"run-{number:02d}")
        result = asyncio.run(run_one(experiment, run_options, progress))
        results.append(result)
        write_run(result, out / f"run-{number:02d}")
        with raw.open("a") as f:
            f.write(raw_block(result))
        with table.open("a") as f:
            f.write(raw_times_row(number, steps, result.durations))
        if on_run is not None:
            on_run(number, result)
    summary = summarize(steps, [r.durations for r in results if r.ok])
    write_summary(out / "summary.json", experiment, results, summary)
    draw_timeline(experiment, results, out, progress)
    return results, summary


def draw_timeline(
    experiment: str, results: list[RunResult], out: Path, progress: Progress
) -> Path | None:
    """``timeline.png`` into ``out``; says once (through ``progress``) why there is none.
    A failure to draw loses only the picture, never the other files."""
    from agata.demo.timeline import TIMELINE_FILE, plots_available, write_timeline

    if not plots_available():
        progress(
            "matplotlib is not installed, so no timeline.png "
            "(pip install 'agata[plots]'); the other files are written"
        )
        return None
    try:
        return write_timeline(experiment, results, out / TIMELINE_FILE)
    except Exception as exc:  # a picture is not worth the series' results
        logger.warning("timeline.png not drawn: %s", exc, exc_info=True)
        progress(f"timeline.png not drawn: {exc}")
        return None


def write_summary(
    path: Path, experiment: str, results: list[RunResult], summary: dict[str, Summary]
) -> None:
    data: dict[str, Any] = {
        "experiment": experiment,
        "runs": len(results),
        "runs_ok": sum(1 for r in results if r.ok),
        "statistic": "mean ± half-width of the 95% confidence interval (Student's t), "
        "over the runs that succeeded; seconds",
        "steps": [
            {
                "key": step.key,
                "name": step.name,
                "label": step.raw_label,
                **summary[step.key].to_json(),
            }
            for step in steps_of(experiment)
        ],
        "errors": [r.error for r in results if r.error],
    }
    path.write_text(json.dumps(data, indent=2))
