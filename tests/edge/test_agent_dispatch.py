"""What the agent does between "start" and the client's spawn (issue 17, dispatch and
failover): a push event's offers stand for a poll, and the failover's quarantine is on
disk before the next task spawns but fsynced after it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cloud_harness import Cloud

from agata.edge import local_state
from edge.conftest import (
    Device,
    Events,
    create_task,
    eventually,
    running_agent,
    start_task,
    stop_task,
)


def running_ids(agent: Any) -> list[str]:
    return [t.task_id for t in agent.running_tasks()]


async def test_a_push_event_with_offers_starts_the_client_without_a_poll(
    cloud: Cloud, device: Device
) -> None:
    # Prepare: an idle agent (poll interval 30 s)
    await create_task(cloud, "t1", "hold", start=False)
    async with running_agent(device.agent()) as agent:
        # Execute: the operator starts a matching task, then stops it
        await start_task(cloud, "t1")
        await eventually(lambda: running_ids(agent) == ["t1"], what="client spawned")
        await stop_task(cloud, "t1")
        await eventually(lambda: running_ids(agent) == [], what="client stopped")

        # Assert: the answers that started and stopped it came with the push events
        # (its connection may have made it poll too, never with t1 in the answer)
        answers = device.events.find("request task", "end")
        with_t1 = [a for a in answers if a["tasks"] == ["t1"]]
        assert with_t1 and all(a.get("pushed") for a in with_t1)
        after = answers[answers.index(with_t1[-1]) + 1 :]
        assert after and after[0].get("pushed") and after[0]["tasks"] == []
        assert agent.pushed_answers >= 2


class SpawnOrder(Events):
    """Events that also note, at the next task's spawn, what the disk holds."""

    def __init__(self, state_file: Path, log: list[str]) -> None:
        super().__init__()
        self.state_file = state_file
        self.log = log

    def __call__(self, function: str, event: str, **fields: Any) -> None:
        super().__call__(function, event, **fields)
        if (function, event, fields.get("task_id")) == ("start task on device", "end", "b-good"):
            on_disk = json.loads(self.state_file.read_text())
            quarantined = [q["task_id"] for q in on_disk["quarantine"]]
            self.log.append(f"spawned b-good; on disk: {quarantined}")


async def test_failover_spawns_before_the_quarantines_fsync_and_after_its_rename(
    cloud: Cloud, device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: E errors, C works (policy one); fsyncs of the state file are noted
    state_file = device.data_dir / "edge" / "state.json"
    log: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        # the file itself, or the temporary file it is renamed from
        if "state.json" in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            log.append("fsync state.json")
        real_fsync(fd)

    monkeypatch.setattr(local_state.os, "fsync", fsync)
    device.events = SpawnOrder(state_file, log)
    await create_task(cloud, "a-error", "error")
    await create_task(cloud, "b-good", "hold")

    # Execute
    async with running_agent(device.agent(policy="one")) as agent:
        await eventually(lambda: running_ids(agent) == ["b-good"], what="switched to C")
        await eventually(lambda: "fsync state.json" in log, what="the quarantine fsynced")

        # Assert: a kill of the agent at the spawn would have kept the quarantine (the
        # file was renamed into place); the fsync came after the spawn
        spawned = log.index("spawned b-good; on disk: ['a-error']")
        assert "fsync state.json" in log[spawned + 1 :]
        assert "fsync state.json" not in log[:spawned]
        [entry] = agent.quarantine()
        assert entry.task_id == "a-error"
