"""The agent's state file: survives restarts, written atomically, recovers from damage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agata.edge.local_state import LocalState, RunningRecord


def test_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "edge" / "state.json"
    state = LocalState.load(path)
    state.record_running(RunningRecord("t1", "2", 100, 100, "tok", 1.0))
    state.add_quarantine("t2", "1", "boom", 60, now=1000.0)
    state.mark_finished("t3", "4")
    state.count("started", 2)
    state.save()

    again = LocalState.load(path)

    assert again.running == {"t1": RunningRecord("t1", "2", 100, 100, "tok", 1.0)}
    assert again.quarantined("t2", "1", now=1001.0) is not None
    assert again.quarantine["t2"].reason == "boom"
    assert again.finished == {"t3": "4"}
    assert again.stats["started"] == 2


def test_quarantine_expires_and_a_new_version_is_not_quarantined(tmp_path: Path) -> None:
    state = LocalState(tmp_path / "state.json")
    state.add_quarantine("t", "1", "failed", 10, now=100.0)

    assert state.quarantined("t", "1", now=105.0) is not None
    assert state.quarantined("t", "2", now=105.0) is None
    assert state.quarantined("t", "1", now=111.0) is None
    assert [e.task_id for e in state.expire_quarantine(now=111.0)] == ["t"]
    assert state.quarantine == {}


def test_clear_quarantine_one_or_all(tmp_path: Path) -> None:
    state = LocalState(tmp_path / "state.json")
    for task_id in ("a", "b", "c"):
        state.add_quarantine(task_id, "1", "x", 100)

    assert state.clear_quarantine("a") == 1
    assert state.clear_quarantine("a") == 0
    assert state.clear_quarantine() == 2


def test_forget_running_only_for_the_same_process(tmp_path: Path) -> None:
    state = LocalState(tmp_path / "state.json")
    state.record_running(RunningRecord("t", "1", 10, 10, "x", 0.0))

    state.forget_running("t", pid=11)
    assert "t" in state.running
    state.forget_running("t", pid=10)
    assert "t" not in state.running


@pytest.mark.parametrize(
    "content", ["{half", "[]", '{"format": 99}', '{"format": 1, "running": [{}]}']
)
def test_a_damaged_file_is_moved_aside_and_the_agent_starts_afresh(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)

    state = LocalState.load(path)

    assert state.running == {} and state.quarantine == {}
    assert not path.exists()
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1


def test_a_crash_while_writing_leaves_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    state = LocalState(path)
    state.add_quarantine("old", "1", "kept", 100)

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        state.add_quarantine("new", "1", "lost", 100)
    monkeypatch.undo()

    on_disk = json.loads(path.read_text())
    assert [q["task_id"] for q in on_disk["quarantine"]] == ["old"]
    assert "old" in LocalState.load(path).quarantine
