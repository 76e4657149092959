"""What ``agata demo`` prints after its run: the measured step times, without verdicts
that one cold sample cannot support."""

from __future__ import annotations

from rich.console import Console

from agata.demo.demo import demo_json, render_table
from agata.demo.experiment import RunResult
from agata.demo.timings import EXP1_EXTRA, EXP1_STEPS

# Cold single samples far above the warm p50 targets (as a real first run gives).
COLD = {"register": 0.057, "start_cloud": 0.014, "update_device": 0.043, "request": 0.0136,
        "download": 0.037, "start_device": 0.0114, "finish": 0.055, "dispatch": 0.106}  # fmt: skip


def _result() -> RunResult:
    return RunResult(
        "exp1",
        {"task": "digits-1"},
        [],
        dict(COLD),
        True,
        2.0,
        cloud_state={"digits-1": "finished"},
        device_state={"digits-1": "finished"},
        accuracy=0.9577,
        rounds=3,
    )


def _screen(data: dict[str, object]) -> str:
    console = Console(record=True, width=120, force_terminal=True, color_system="truecolor")
    render_table(console, data)
    return console.export_text(styles=False)


def test_cold_samples_are_shown_as_measured_without_a_verdict() -> None:
    # Prepare
    data = demo_json(_result(), wall=2.0)

    # Execute
    screen = _screen(data)

    # Assert: every step with its measured figure, and no step called "over" or "ok"
    step_lines = [line for line in screen.splitlines() if "ms" in line and "│" in line]
    assert len(step_lines) == len(EXP1_STEPS) + len(EXP1_EXTRA)
    for line in step_lines:
        assert "over" not in line and " ok" not in line and "<=" not in line, line
    assert "57.0 ms" in screen and "106.0 ms" in screen
    assert "1 cold sample" in screen
    assert "agata bench" in screen  # where the warm medians are measured
    assert "whole demo: 2.0 s (target <= 30 s) ok" in screen


def test_demo_json_gives_no_per_step_verdict() -> None:
    data = demo_json(_result(), wall=2.0)

    assert data["samples_per_step"] == 1
    for step in data["steps"]:
        assert set(step) == {"key", "name", "seconds"}
    assert data["finished"] is True
