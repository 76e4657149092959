"""The original's experiments 1 and 2, one run each, in this process.

Experiment 1: start the cloud; create the digits task and upload its bundle through the
HTTP API; start it; start an edge agent, which gets the task by itself; start the second
Flower client by hand, as the original did; the rounds run; the task finishes and
becomes inactive on the device and on the cloud.

Experiment 2: an erroring task E (its client raises at start) and a correct task C, both
running on the cloud before the device comes up; E is created first, so the device picks
it, fails on it, puts it in quarantine and switches to C by itself. C then runs to its
end with a hand-started second client.

Each run returns its merged, time-ordered events and the step durations
(:mod:`agata.demo.timings`); :func:`write_run` stores them as the original did.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agata.demo.harness import Lab, LabOptions, Progress, find_example_task
from agata.demo.processes import free_port
from agata.demo.timings import (
    EXP1_EXTRA,
    EXP1_STEPS,
    EXP2_EXTRA,
    EXP2_STEPS,
    exp1_durations,
    exp2_durations,
    merge_events,
    raw_times_block,
    switched,
)
from agata.errors import AgataError, ErrorCode

CRITERIA = '(data_qnt > 50) and ("camera" in sensors)'


@dataclass
class ExperimentOptions:
    rounds: int = 1
    bus_url: str = "memory://"
    db_url: str = ""
    data_dir: Path | None = None
    task_dir: Path | None = None  # the digits bundle (default: examples/tasks/digits)
    failing_dir: Path | None = None  # exp2's task E (default: examples/tasks/failing)
    timeout: float = 120.0
    request_interval: float = 10.0
    agent_first: bool = False  # exp1: start the agent before the task (measures push)

    def lab(self) -> LabOptions:
        return LabOptions(
            bus_url=self.bus_url,
            db_url=self.db_url,
            data_dir=self.data_dir,
            request_interval=self.request_interval,
        )


@dataclass
class RunResult:
    experiment: str
    task_ids: dict[str, str]
    events: list[dict[str, Any]]
    durations: dict[str, float | None]
    ok: bool
    wall_seconds: float
    cloud_state: dict[str, str] = field(default_factory=dict)
    device_state: dict[str, str] = field(default_factory=dict)
    accuracy: float | None = None
    rounds: int | None = None
    switched: bool | None = None
    ports: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        steps = EXP1_STEPS + EXP1_EXTRA if self.experiment == "exp1" else EXP2_STEPS + EXP2_EXTRA
        return {
            "experiment": self.experiment,
            "ok": self.ok,
            "error": self.error,
            "task_ids": self.task_ids,
            "steps": [
                {"key": s.key, "name": s.name, "seconds": self.durations.get(s.key)} for s in steps
            ],
            "accuracy": self.accuracy,
            "rounds": self.rounds,
            "switched": self.switched,
            "cloud_state": self.cloud_state,
            "device_state": self.device_state,
            "wall_seconds": self.wall_seconds,
            "ports": self.ports,
            "events": len(self.events),
        }


AfterRun = Callable[[Lab, "RunResult"], Any]


def _digits_arguments(port: int, rounds: int) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        # The cloud replaces {host} and {port} by the task's own values.
        "server_arguments": ["--address", "{host}:{port}", "--rounds", str(rounds),
                             "--min-clients", "2", "--accuracy-trigger", "0.9"],
        "client_arguments": ["--address", f"127.0.0.1:{port}",
                             "--client-index", "0", "--num-clients", "2"],
        "selection_criteria": CRITERIA,
    }  # fmt: skip


def _second_client_arguments(port: int) -> list[str]:
    return ["--address", f"127.0.0.1:{port}", "--client-index", "1", "--num-clients", "2"]


async def _wait_task_ended(lab: Lab, task_id: str, deadline: float, progress: Progress) -> dict:
    """Poll the task until it is no longer running on the cloud; report rounds meanwhile."""
    seen_round = None
    while True:
        task = await lab.get_task(task_id)
        if task.get("last_round") is not None and task["last_round"] != seen_round:
            seen_round = task["last_round"]
            acc = task.get("last_acc")
            progress(f"round {seen_round} done" + (f": accuracy {acc:.3f}" if acc else ""))
        if not task["running"]:
            return task
        crash = lab.agent_crashed()
        if crash is not None:
            raise AgataError(ErrorCode.INTERNAL, f"the agent stopped: {crash}")
        if time.monotonic() > deadline:
            raise AgataError(ErrorCode.TIMEOUT, f"task {task_id} still running after the timeout")
        await asyncio.sleep(0.2)


async def run_exp1(
    options: ExperimentOptions,
    progress: Progress | None = None,
    *,
    after: AfterRun | None = None,
) -> RunResult:
    """One run of experiment 1. ``after(lab, result)`` (awaited if a coroutine) runs
    before the lab is closed: ``agata demo --keep-running`` waits there."""
    say = progress or (lambda message: None)
    bundle = options.task_dir or find_example_task("digits")
    task_id = f"digits-{secrets.token_hex(2)}"
    user_id = f"device-{secrets.token_hex(2)}"
    started = time.monotonic()
    deadline = started + options.timeout
    result = RunResult("exp1", {"task": task_id}, [], {}, False, 0.0)
    async with Lab(options.lab(), say) as lab:
        try:
            node = await lab.start_cloud()
            flower_port = free_port()
            result.ports = {"gateway": node.port or 0, "flower": flower_port}
            say(f"cloud up at {lab.url} ({options.bus_url}); Flower port {flower_port}")
            if options.agent_first:
                await lab.start_agent(user_id)
                say(f"edge agent up as {user_id}, idle")
                await lab.wait_agent_event("request task", timeout=30)
            await lab.register_task(
                task_id, bundle, **_digits_arguments(flower_port, options.rounds),
                tags=["digits", "demo"],
            )  # fmt: skip
            say(f"task {task_id} registered, bundle uploaded")
            await lab.start_task(task_id)
            say(f"task {task_id} started on the cloud ({options.rounds} rounds, 2 clients)")
            if not options.agent_first:
                await lab.start_agent(user_id)
                say(f"edge agent up as {user_id}")
            assert lab.node is not None
            await lab.start_second_client(
                lab.node.bundles.root / f"task_{task_id}", _second_client_arguments(flower_port)
            )
            say("second Flower client started by hand")
            task = await _wait_task_ended(lab, task_id, deadline, say)
            ended = await lab.wait_agent_event(
                "task finished", timeout=max(1.0, deadline - time.monotonic()), task_id=task_id
            )
            result.device_state = {task_id: "finished" if ended else "unknown"}
            result.cloud_state = {task_id: task["state"]}
            result.accuracy = task.get("last_acc")
            result.rounds = task.get("last_round")
            if lab.second_client is not None:
                await asyncio.wait_for(lab.second_client.wait(), 15)
            say(f"task {task_id} {task['state']} on the cloud and finished on the device")
            result.ok = task["state"] == "finished"
            if not result.ok:
                result.error = f"task ended {task['state']}: {task.get('state_reason')}"
        except AgataError as exc:
            result.error = exc.message
        finally:
            with _suppress():
                cloud = await lab.cloud_events([task_id])
                result.events = merge_events(cloud, lab.events)
        result.durations = exp1_durations(result.events, task_id)
        result.wall_seconds = time.monotonic() - started
        if after is not None:
            outcome = after(lab, result)
            if asyncio.iscoroutine(outcome):
                await outcome
    return result


async def run_exp2(options: ExperimentOptions, progress: Progress | None = None) -> RunResult:
    """One run of experiment 2: the device fails on E and switches to C by itself."""
    say = progress or (lambda message: None)
    correct_bundle = options.task_dir or find_example_task("digits")
    failing_bundle = options.failing_dir or find_example_task("failing")
    suffix = secrets.token_hex(2)
    failing_id, correct_id = f"E-{suffix}", f"C-{suffix}"
    user_id = f"device-{suffix}"
    started = time.monotonic()
    deadline = started + options.timeout
    result = RunResult("exp2", {"E": failing_id, "C": correct_id}, [], {}, False, 0.0)
    async with Lab(options.lab(), say) as lab:
        try:
            node = await lab.start_cloud()
            port_e, port_c = free_port(), free_port()
            while port_c == port_e:
                port_c = free_port()
            result.ports = {"gateway": node.port or 0, "flower_E": port_e, "flower_C": port_c}
            say(f"cloud up at {lab.url}; Flower ports E {port_e}, C {port_c}")
            # E first: the cloud offers tasks in creation order, the device takes the first.
            for task_id, bundle, port in (
                (failing_id, failing_bundle, port_e),
                (correct_id, correct_bundle, port_c),
            ):
                await lab.register_task(task_id, bundle, **_digits_arguments(port, options.rounds))
            for task_id in (failing_id, correct_id):
                await lab.start_task(task_id)
            say(f"tasks {failing_id} (erroring) and {correct_id} (correct) started")
            await lab.start_agent(user_id)
            say(f"edge agent up as {user_id}")
            await lab.wait_agent_event(
                "start task on device", timeout=deadline - time.monotonic(), task_id=correct_id
            )
            assert lab.node is not None
            await lab.start_second_client(
                lab.node.bundles.root / f"task_{correct_id}", _second_client_arguments(port_c)
            )
            say(f"second Flower client started by hand for {correct_id}")
            task = await _wait_task_ended(lab, correct_id, deadline, say)
            await lab.wait_agent_event(
                "task finished", timeout=max(1.0, deadline - time.monotonic()), task_id=correct_id
            )
            # E's verdict: the agent judges a failure against its run (up to
            # run_end_grace after it failed), which may end after C's short run.
            await lab.wait_agent_event(
                "task failed", timeout=max(1.0, deadline - time.monotonic()), task_id=failing_id
            )
            failing = await lab.get_task(failing_id)
            result.cloud_state = {failing_id: failing["state"], correct_id: task["state"]}
            quarantined = lab.agent.quarantine() if lab.agent else []
            result.device_state = {
                failing_id: "quarantined"
                if any(q.task_id == failing_id for q in quarantined)
                else "unknown",
                correct_id: "finished",
            }
            result.accuracy = task.get("last_acc")
            result.rounds = task.get("last_round")
        except AgataError as exc:
            result.error = exc.message
        finally:
            with _suppress():
                cloud = await lab.cloud_events([failing_id, correct_id])
                result.events = merge_events(cloud, lab.events)
    result.durations = exp2_durations(result.events, failing_id, correct_id)
    result.switched = switched(result.events, failing_id, correct_id)
    result.ok = bool(result.switched) and result.error is None
    result.wall_seconds = time.monotonic() - started
    return result


class _suppress:
    """Keep the run's own error; a failure to read the events only loses the events."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: object, trace: object) -> bool:
        return isinstance(error, Exception)


def write_run(result: RunResult, folder: Path) -> None:
    """``events.json`` and ``result.json`` of one run into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.json").write_text(json.dumps(result.events, indent=1))
    (folder / "result.json").write_text(json.dumps(result.to_json(), indent=2))


def raw_block(result: RunResult) -> str:
    steps = EXP1_STEPS if result.experiment == "exp1" else EXP2_STEPS
    return raw_times_block(steps, result.durations)
