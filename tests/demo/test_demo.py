"""``agata demo`` and ``agata experiment`` for real: Flower processes, a cloud, an agent.

Each command runs as a subprocess leading its own process group, with a random mark in
its environment that every process it starts inherits; afterwards no process of that
group and no process carrying the mark may be left.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agata.demo.timings import EXP1_STEPS, EXP2_STEPS, parse_raw_times

pytestmark = pytest.mark.flower

# Task processes get an allowlisted environment (docs/runtime.md), which passes LC_*
# variables on: the mark must be one of them to reach the Flower processes.
MARK = "LC_AGATA_TEST_DEMO_MARK"
COMMAND = [sys.executable, "-m", "agata"]


def _start(args: list[str], mark: str) -> subprocess.Popen[str]:
    env = {**os.environ, MARK: mark, "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.Popen(
        [*COMMAND, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: pgid == pid
    )


def _survivors(pgid: int, mark: str) -> list[str]:
    """Live processes of the group ``pgid`` or carrying ``mark`` (zombies left out)."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rfind(")") + 2 :].split()
            if fields[0] == "Z":
                continue
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[2]) == pgid or needle in environ.split(b"\0"):
            found.append(f"{entry.name}: {cmdline}")
    return found


def _assert_nothing_left(pgid: int, mark: str) -> None:
    deadline = time.monotonic() + 5
    while (left := _survivors(pgid, mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"processes left behind: {left}"


def test_demo_json_runs_experiment_1_and_leaves_nothing() -> None:
    # Prepare
    mark = secrets.token_hex(8)

    # Execute
    demo = _start(["demo", "--json"], mark)
    out, err = demo.communicate(timeout=120)

    # Assert
    assert demo.returncode == 0, err[-3000:]
    data = json.loads(out)
    steps = {s["key"]: s["seconds"] for s in data["steps"]}
    for step in EXP1_STEPS:
        assert steps[step.key] is not None and steps[step.key] >= 0, step.key
    assert steps["dispatch"] is not None
    assert data["finished"] is True
    task_id = data["task_ids"]["task"]
    assert data["cloud_state"] == {task_id: "finished"}
    assert data["device_state"] == {task_id: "finished"}
    assert data["accuracy"] > 0.85
    assert data["rounds"] == 3
    assert data["demo_wall_seconds"] <= 60
    assert data["ports"]["flower"] != 8080
    _assert_nothing_left(demo.pid, mark)


def test_two_demos_at_once_do_not_collide() -> None:
    marks = [secrets.token_hex(8), secrets.token_hex(8)]
    demos = [_start(["demo", "--json", "--rounds", "2"], m) for m in marks]
    results = [d.communicate(timeout=120) for d in demos]

    datas = []
    for demo, (out, err) in zip(demos, results, strict=True):
        assert demo.returncode == 0, err[-3000:]
        datas.append(json.loads(out))
    assert all(d["finished"] for d in datas)
    assert datas[0]["ports"]["gateway"] != datas[1]["ports"]["gateway"]
    assert datas[0]["ports"]["flower"] != datas[1]["ports"]["flower"]
    for demo, mark in zip(demos, marks, strict=True):
        _assert_nothing_left(demo.pid, mark)


def test_interrupted_demo_stops_every_process() -> None:
    # Prepare: a long session, interrupted while both Flower clients run
    mark = secrets.token_hex(8)
    demo = _start(["demo", "--rounds", "100"], mark)
    assert demo.stderr is not None and demo.stdout is not None
    deadline = time.monotonic() + 60
    seen = ""
    while "client of task" not in seen and time.monotonic() < deadline:
        line = demo.stdout.readline()
        if not line:
            break
        seen += line
    assert "client of task" in seen, seen + demo.stderr.read()
    assert len(_survivors(demo.pid, mark)) >= 3  # demo, server, clients at least

    # Execute
    os.kill(demo.pid, signal.SIGTERM)
    demo.wait(timeout=30)

    # Assert
    assert demo.returncode == 130
    _assert_nothing_left(demo.pid, mark)


def test_experiment_2_switches_from_e_to_c(tmp_path: Path) -> None:
    # Prepare
    mark = secrets.token_hex(8)
    out = tmp_path / "exp2"

    # Execute
    run = _start(["experiment", "exp2", "--runs", "1", "--out", str(out)], mark)
    stdout, stderr = run.communicate(timeout=120)

    # Assert
    assert run.returncode == 0, stdout[-3000:] + stderr[-3000:]
    result = json.loads((out / "run-01" / "result.json").read_text())
    failing, correct = result["task_ids"]["E"], result["task_ids"]["C"]
    assert result["switched"] is True
    assert result["device_state"] == {failing: "quarantined", correct: "finished"}
    assert result["cloud_state"][correct] == "finished"
    events = json.loads((out / "run-01" / "events.json").read_text())
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    by_agent = [(e["function"], e.get("task_id")) for e in events if e["service"] == "edge agent"]
    failed_at = by_agent.index(("task failed", failing))
    assert ("start task on device", correct) in by_agent[failed_at:]
    samples = parse_raw_times((out / "exp2_raw_times").read_text())
    assert len(samples["Time for a bug to happen"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [s["key"] for s in summary["steps"]][: len(EXP2_STEPS)] == [s.key for s in EXP2_STEPS]
    assert summary["runs_ok"] == 1
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"timeline: {out / 'timeline.png'}" in stdout
    _assert_nothing_left(run.pid, mark)
