"""Device hooks with a real agent, a real cloud and real hook programs that record their
calls (agata.edge.hooks)."""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cloud_harness import Cloud

from agata.edge.hooks import HookEvent, HookRunner, HookState
from agata.errors import AgataError, ErrorCode
from agata.resources import example_path
from edge.conftest import Device, create_task, eventually, pid_alive, running_agent

RECORDER = """
import json, os, sys, time
log, pause, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
started = time.time()
with open(log + ".pids", "a") as f:
    f.write(f"{os.getpid()}\\n")
if pause > 0:
    time.sleep(pause)
seen = {k: v for k, v in os.environ.items() if k.startswith("AGATA_")}
seen["started"], seen["ended"] = started, time.time()
with open(log, "a") as f:
    f.write(json.dumps(seen) + "\\n")
print("hook saw", seen.get("AGATA_HOOK_STATE"))
sys.exit(code)
"""


def _hook(tmp_path: Path, pause: float = 0.0, code: int = 0) -> tuple[str, Path]:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    log = tmp_path / "hook-calls.jsonl"
    return f"{sys.executable} {script} {log} {pause} {code}", log


def _calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _states(log: Path, task_id: str) -> list[str]:
    return [c["AGATA_HOOK_STATE"] for c in _calls(log) if c["AGATA_TASK_ID"] == task_id]


async def test_hook_sees_every_state_change_and_its_failures_are_logged(
    cloud: Cloud,
    device: Device,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: E errors, C sends one round and finishes; the hook exits 3 every time
    command, log = _hook(tmp_path, code=3)
    monkeypatch.setenv("AGATA_ENROLLMENT_TOKEN", "secret-enrollment-token")
    monkeypatch.setenv("AGATA_LED_PIN", "22")
    await create_task(cloud, "a-error", "error")
    await create_task(cloud, "b-finish", "finish")
    caplog.set_level(logging.INFO, logger="agata.edge.hooks")

    # Execute
    async with running_agent(device.agent(policy="one", hook_command=command)):
        await eventually(lambda: "finished" in _states(log, "b-finish"), what="C finished")

    # Assert: each task's states in order, with the state in the environment
    assert _states(log, "a-error") == ["downloading", "running", "failed", "quarantined"]
    assert _states(log, "b-finish") == ["downloading", "running", "round", "finished"]
    calls = _calls(log)
    failed = next(c for c in calls if c["AGATA_HOOK_STATE"] == "failed")
    assert "broken on purpose" in failed["AGATA_REASON"]
    assert failed["AGATA_USER_ID"] == "dev1" and failed["AGATA_ROUND"] == ""
    round_call = next(c for c in calls if c["AGATA_HOOK_STATE"] == "round")
    assert round_call["AGATA_ROUND"] == "1"
    assert json.loads(round_call["AGATA_METRICS"]) == {"acc": 0.9}
    assert float(round_call["AGATA_HOOK_TIME"]) <= round_call["started"]
    # the agent's own settings reach the hook, its enrollment token does not
    assert all(c["AGATA_LED_PIN"] == "22" for c in calls)
    assert all("AGATA_ENROLLMENT_TOKEN" not in c for c in calls)
    # the hook's output and its non-zero exit are logged; the agent went on regardless
    messages = [r.getMessage() for r in caplog.records if r.name == "agata.edge.hooks"]
    assert any("hook saw finished" in m for m in messages)
    assert any("exited with 3" in m for m in messages)


async def test_a_slow_hook_never_delays_the_agent_and_runs_one_at_a_time(
    cloud: Cloud, device: Device, tmp_path: Path
) -> None:
    # Prepare: each hook call takes 0.3 s; a task that runs (downloading, running, round)
    command, log = _hook(tmp_path, pause=0.3)
    async with running_agent(device.agent(hook_command=command)) as agent:
        # Execute
        began = time.monotonic()
        await create_task(cloud, "t0", "hold")
        await eventually(lambda: agent.running_tasks(), what="client spawned")
        dispatch = time.monotonic() - began

        # Assert: the client was spawned long before the hooks of its states were done
        assert dispatch < 0.3 + 1.0
        assert len(_calls(log)) < 3
        await eventually(lambda: len(_calls(log)) >= 3, timeout=10, what="three hook calls")
    calls = sorted(_calls(log), key=lambda c: c["started"])
    assert [c["AGATA_HOOK_STATE"] for c in calls[:3]] == ["downloading", "running", "round"]
    for before, after in itertools.pairwise(calls):
        assert before["ended"] <= after["started"], "two hooks ran at once"


async def test_a_hook_that_hangs_is_killed_with_its_children(
    cloud: Cloud, device: Device, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a hook that starts a grandchild and hangs; 0.5 s allowed
    script = tmp_path / "hang.sh"
    pids = tmp_path / "hang.pids"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! >> {pids}\necho $$ >> {pids}\nwait\n")
    script.chmod(0o755)
    await create_task(cloud, "t1", "hold")
    caplog.set_level(logging.INFO, logger="agata.edge.hooks")

    # Execute
    async with running_agent(device.agent(hook_command=str(script), hook_timeout=0.5)) as agent:
        await eventually(lambda: agent.running_tasks(), what="client spawned")
        await eventually(lambda: pids.exists() and len(pids.read_text().split()) >= 2)
        first = [int(p) for p in pids.read_text().split()[:2]]

        # Assert: killed after the timeout, its grandchild too; the next hook runs
        await eventually(lambda: not any(pid_alive(p) for p in first), timeout=5, what="killed")
        await eventually(lambda: len(pids.read_text().split()) >= 4, timeout=5, what="next hook")
        assert agent.running_tasks()
    assert any("killed after 0.5 s" in r.getMessage() for r in caplog.records)


async def test_a_hook_that_is_no_program_is_refused_at_start(
    device: Device, tmp_path: Path
) -> None:
    with pytest.raises(AgataError) as refused:
        device.agent(hook_command=str(tmp_path / "no-such-hook"))

    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    assert "no-such-hook" in refused.value.message
    with pytest.raises(AgataError):
        device.agent(hook_command="'unclosed")


async def test_the_backlog_keeps_the_latest_changes(tmp_path: Path) -> None:
    # Prepare: a runner whose worker is not started yet, a backlog of 3
    command, log = _hook(tmp_path)
    runner = HookRunner(command.split(), timeout=5, backlog=3)

    # Execute: five changes arrive before the first hook runs
    for number in range(5):
        runner.notify(HookEvent(HookState.ROUND, "t", round=number))
    runner.start("dev1")
    await runner.close(timeout=10)

    # Assert: the two oldest were dropped, the rest ran in order
    assert [c["AGATA_ROUND"] for c in _calls(log)] == ["2", "3", "4"]


def test_the_example_gpio_hook_does_nothing_off_a_pi(tmp_path: Path) -> None:
    import subprocess

    hook = example_path("hooks", "gpio-led")
    for state in HookState:
        run = subprocess.run(
            [str(hook)],
            env={"PATH": "/usr/bin:/bin", "AGATA_HOOK_STATE": str(state), "AGATA_TASK_ID": "t"},
            capture_output=True,
            text=True,
            timeout=10,
            cwd=tmp_path,
        )
        assert run.returncode == 0, run.stderr
        assert "no GPIO here" in run.stdout
