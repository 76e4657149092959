"""``timeline.png`` of an experiment series (agata.demo.timeline, agata.demo.series)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from agata.demo.experiment import RunResult
from agata.demo.series import draw_timeline
from agata.demo.timeline import run_spans, split_step
from agata.demo.timings import AGENT

PNG = b"\x89PNG\r\n\x1a\n"


def _exp2_run(offset: float, ok: bool = True) -> RunResult:
    """The agent's events of one experiment-2 run, as the agent writes them."""

    def event(at: float, function: str, kind: str, task: str | None = None) -> dict[str, object]:
        fields: dict[str, object] = {"time": offset + at, "service": AGENT}
        fields |= {"function": function, "event": kind}
        return fields | ({"task_id": task} if task else {})

    events = [
        event(0.00, "download task", "end", "E"),
        event(0.02, "start task on device", "end", "E"),
        event(0.08, "task failed", "end", "E"),
        event(0.09, "download task", "start", "C"),
        event(0.16, "download task", "end", "C"),
        event(0.18, "start task on device", "end", "C"),
        event(0.19, "request task", "start"),
        event(0.23, "request task", "end"),
    ]
    return RunResult("exp2", {"E": "E", "C": "C"}, events, {}, ok, 1.0)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_series_timeline_is_a_png_with_a_row_per_run(tmp_path: Path) -> None:
    # Prepare: three runs, the last one failed before any step
    results = [
        _exp2_run(100.0),
        _exp2_run(200.0),
        RunResult("exp2", {"E": "E", "C": "C"}, [], {}, False, 1.0),
    ]
    said: list[str] = []

    # Execute
    path = draw_timeline("exp2", results, tmp_path, said.append)

    # Assert
    assert path == tmp_path / "timeline.png"
    width, height = _png_size(path)
    assert width >= 1000 and height >= 300
    assert said == []
    spans = run_spans(results[0])
    assert spans["failover"] == pytest.approx((100.08, 100.18))
    assert spans["request_new"] == pytest.approx((100.19, 100.23))


def test_without_matplotlib_it_says_so_once_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    said: list[str] = []

    path = draw_timeline("exp2", [_exp2_run(0.0)], tmp_path, said.append)

    assert path is None
    assert len(said) == 1 and "agata[plots]" in said[0]
    assert not (tmp_path / "timeline.png").exists()


def test_training_before_the_same_step_in_every_run_splits_the_timeline() -> None:
    # exp1-like: steps within the first 0.6 s, the training, then "finish"
    runs = [
        {"a": (0.0, 0.1), "b": (0.2, 0.6), "finish": (3.0, 3.2)},
        {"a": (0.0, 0.2), "b": (0.2, 0.5), "finish": (2.0, 2.4)},
    ]
    contiguous = [{"a": (0.0, 0.1), "b": (0.1, 0.3)}]
    different = [runs[0], {"a": (0.0, 0.1), "b": (2.0, 2.1), "finish": (2.1, 2.2)}]

    assert split_step(runs) == "finish"
    assert split_step([*runs, {}]) == "finish"  # a failed run has no steps
    assert split_step(contiguous) is None
    assert split_step(different) is None  # the long stretch is not before the same step
