"""``timeline.png`` of an experiment series: when each step ran, run after run.

Two panels, one figure:

- **left, the timeline**: one row per run; each step is a bar from its start to its end,
  in seconds since the run's first step began. Below the steps, a thin hatched bar
  shows the run's extra figure: the dispatch latency (exp1) or the failover (exp2,
  from E's error seen to C's client spawned); above them, for exp1, a thin grey bar
  while the task trains. Long training before step 7 splits the timeline in two panels.
- **right, the durations**: each step's duration in every run (log scale, one line per
  step), so that steps of a few milliseconds can be read beside those of a second.

Matplotlib is optional (``pip install 'agata[plots]'``): :func:`write_timeline` returns
None when it is missing and the caller says so once; the events and the other files
are written all the same. The figure is drawn without pyplot (no global state, no
display needed).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agata.demo.experiment import RunResult
from agata.demo.timings import (
    EXP1_EXTRA,
    EXP1_STEPS,
    EXP2_EXTRA,
    EXP2_STEPS,
    Span,
    Step,
    exp1_spans,
    exp2_spans,
)

__all__ = ["TIMELINE_FILE", "plots_available", "run_spans", "split_step", "write_timeline"]

logger = logging.getLogger(__name__)

TIMELINE_FILE = "timeline.png"
# Colour-blind-safe palette (Okabe-Ito), one colour per step.
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#882255")
EXTRA_COLOUR = "#444444"
RUNNING_COLOUR = "#BBBBBB"


def plots_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def run_spans(result: RunResult) -> dict[str, Span | None]:
    """Start and end of every step (and the extra figure) of one run, from its events."""
    if result.experiment == "exp1":
        return exp1_spans(result.events, result.task_ids["task"])
    return exp2_spans(result.events, result.task_ids["E"], result.task_ids["C"])


def _steps(experiment: str) -> tuple[tuple[Step, ...], Step]:
    if experiment == "exp1":
        return EXP1_STEPS, EXP1_EXTRA[0]
    return EXP2_STEPS, EXP2_EXTRA[0]


def _relative(run: dict[str, Span | None]) -> dict[str, Span]:
    """The run's spans in seconds since its first step began (missing steps left out)."""
    found = {key: span for key, span in run.items() if span is not None}
    if not found:
        return {}
    zero = min(start for start, _ in found.values())
    return {key: (start - zero, end - zero) for key, (start, end) in found.items()}


def split_step(runs: Sequence[dict[str, Span]], share: float = 0.4) -> str | None:
    """The step after which every run has a long stretch without any step (exp1: the
    Flower rounds before "finish"), or None.

    A stretch is long when it takes at least ``share`` of its run's whole span, and the
    same step MUST follow it in every run that has steps: the timeline then shows the
    steps before it and the steps from it on in two panels, each with its own zero.
    """
    found: set[str] = set()
    for run in runs:
        if not run:
            continue
        ordered = sorted(run.items(), key=lambda item: item[1])
        total = max(end for _, end in run.values()) - ordered[0][1][0]
        reach, best, best_key = ordered[0][1][1], 0.0, None
        for key, (start, end) in ordered[1:]:
            if start - reach > best:
                best, best_key = start - reach, key
            reach = max(reach, end)
        if best_key is None or total <= 0 or best < share * total:
            return None
        found.add(best_key)
    return found.pop() if len(found) == 1 else None


def write_timeline(experiment: str, results: Sequence[RunResult], path: Path) -> Path | None:
    """Draw the series' timeline into ``path`` (PNG); None when matplotlib is missing.

    Runs whose steps were not found (a failed run) keep their row, empty, so row N is
    always run N. When every run has a long stretch without any step before the same
    step (exp1: the Flower rounds before step 7), the timeline has two panels, the
    second with each run's zero at that step (:func:`split_step`), so that steps of
    milliseconds stay visible.
    """
    if not plots_available():
        return None
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    steps, extra = _steps(experiment)
    spans = [run_spans(result) for result in results]
    relative = [_relative(run) for run in spans]
    rows = len(results)
    cut = split_step([{k: v for k, v in r.items() if k != extra.key} for r in relative])
    # Per timeline panel: each run's zero (seconds) and the panel's x range.
    panels: list[tuple[list[float], tuple[float, float]]] = []
    if cut is None:
        ends = [end for run in relative for _, end in run.values()] or [1.0]
        panels.append(([0.0] * rows, (0.0, max(ends) * 1.03)))
    else:
        zeros = [run[cut][0] if cut in run else 0.0 for run in relative]
        before = [e for r in relative for k, (s0, e) in r.items() if cut in r and s0 < r[cut][0]]
        after = [e - z for r, z in zip(relative, zeros, strict=True) for e in _ends_from(r, cut)]
        width_a, width_b = max(before or [1.0]), max(after or [1.0])
        panels.append(([0.0] * rows, (-0.02 * width_a, width_a * 1.05)))
        panels.append((zeros, (-0.25 * width_b, width_b * 1.05)))
    figure = Figure(figsize=(13, 2.2 + 0.42 * max(rows, 3)), dpi=100, layout="constrained")
    ratios = (3.0,) if len(panels) == 1 else (2.0, 1.2)
    axes = figure.subplots(1, len(panels) + 1, width_ratios=(*ratios, 2.2))
    timeline_axes, durations_axis = list(axes[:-1]), axes[-1]
    title = "experiment 1" if experiment == "exp1" else "experiment 2 (failover E -> C)"
    figure.suptitle(f"{title}: {rows} run(s)", fontsize=12)
    colour = {step.key: COLOURS[i % len(COLOURS)] for i, step in enumerate(steps)}

    for axis, (zeros, (low, high)) in zip(timeline_axes, panels, strict=True):
        for row, (run, result) in enumerate(zip(relative, results, strict=True)):
            zero = zeros[row]
            running = _task_running(experiment, run)
            if running is not None:
                axis.broken_barh(
                    [(running[0] - zero, running[1] - running[0])], (row - 0.2, 0.1),
                    facecolors=RUNNING_COLOUR,
                )  # fmt: skip
            for step in steps:
                span = run.get(step.key)
                if span is not None:
                    axis.broken_barh(
                        [(span[0] - zero, max(span[1] - span[0], 1e-4))], (row - 0.38, 0.46),
                        facecolors=colour[step.key], edgecolor="white", linewidth=0.5,
                    )  # fmt: skip
            span = run.get(extra.key)
            if span is not None:
                axis.broken_barh(
                    [(span[0] - zero, span[1] - span[0])], (row + 0.14, 0.2),
                    facecolors="none", edgecolor=EXTRA_COLOUR, hatch="////", linewidth=0.8,
                )  # fmt: skip
            if not result.ok:
                axis.text(low, row, " failed", va="center", color="#B00020", fontsize=8)
        axis.set_xlim(low, high)
        axis.set_ylim(rows - 0.5, -0.6)
        axis.grid(axis="x", alpha=0.3)
    first_axis = timeline_axes[0]
    first_axis.set_yticks(range(rows), [f"run {n}" for n in range(1, rows + 1)])
    first_axis.set_title("when each step ran", fontsize=10, loc="left")
    first_axis.set_xlabel("seconds since the run's first step began")
    if cut is not None:
        second = timeline_axes[1]
        second.set_yticks([])
        cut_name = next(step.name for step in steps if step.key == cut)
        gaps = [_gap_before(run, cut) for run in relative if cut in run]
        second.set_title(
            f"... {min(gaps):.1f}-{max(gaps):.1f} s later: {cut_name}", fontsize=10, loc="left"
        )
        second.set_xlabel(f"seconds since {cut_name} began")
        first_axis.spines["right"].set_linestyle((0, (4, 3)))
        second.spines["left"].set_linestyle((0, (4, 3)))

    numbers = list(range(1, rows + 1))
    for step in (*steps, extra):
        values = [
            float("nan") if (s := run.get(step.key)) is None else max(s[1] - s[0], 1e-5) * 1000
            for run in spans
        ]
        is_extra = step is extra
        durations_axis.plot(
            numbers, values, marker="o", markersize=4, linewidth=1.2,
            linestyle="--" if is_extra else "-",
            color=EXTRA_COLOUR if is_extra else colour[step.key],
        )  # fmt: skip
    durations_axis.set_yscale("log")
    durations_axis.set_xlabel("run")
    durations_axis.set_ylabel("duration (ms, log scale)")
    durations_axis.set_title("each step's duration per run", fontsize=10)
    durations_axis.set_xticks(numbers if rows <= 20 else numbers[:: max(1, rows // 10)])
    durations_axis.grid(alpha=0.3, which="both")

    handles: list[Any] = [Patch(facecolor=colour[s.key], label=s.name) for s in steps]
    handles.append(
        Patch(facecolor="none", edgecolor=EXTRA_COLOUR, hatch="////", label=f"{extra.name}")
    )
    if experiment == "exp1":
        handles.append(Patch(facecolor=RUNNING_COLOUR, label="task running (Flower rounds)"))
    figure.legend(
        handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=9,
        frameon=False,
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    logger.debug("timeline written to %s", path)
    return path


def _gap_before(run: dict[str, Span], cut: str) -> float:
    """Seconds between the last step before ``cut`` ended and ``cut`` began."""
    before = [end for start, end in run.values() if start < run[cut][0]]
    return run[cut][0] - max(before, default=run[cut][0])


def _ends_from(run: dict[str, Span], cut: str) -> list[float]:
    """The ends of the steps of ``run`` that start with or after step ``cut``."""
    if cut not in run:
        return []
    return [end for start, end in run.values() if start >= run[cut][0]]


def _task_running(experiment: str, run: dict[str, Span]) -> Span | None:
    """exp1: from the client's spawn (end of step 6) to the first "Finished" (step 7)."""
    if experiment != "exp1" or "start_device" not in run or "finish" not in run:
        return None
    start, end = run["start_device"][1], run["finish"][0]
    return (start, end) if end > start else None
