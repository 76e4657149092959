"""The spare start (issue 17, dispatch and failover): a shell parked in the next run's
cgroups becomes the task, with exactly the task's environment, folder, stdin and
limits; a start it cannot carry, or a spare that is gone, starts the ordinary way."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agata.runtime.containment import Containment, ContainmentKind, detect_containment
from agata.runtime.limits import Limits
from agata.runtime.process import AsyncioProcessLauncher, task_environment
from agata.runtime.supervisor import ProcessState, TaskProcess

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="cgroups, /proc")

# Writes what it runs with to <work>/seen.json: env, folder, stdin, its cgroups.
PROBE = """import json, os, sys
cgroups = dict(line.split(":", 2)[1:] for line in open("/proc/self/cgroup").read().splitlines())
seen = {"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv[1:],
        "stdin": os.readlink("/proc/self/fd/0"), "pid": os.getpid(), "cgroups": cgroups}
pids = cgroups.get("pids") or cgroups.get("")
limit = f"/sys/fs/cgroup/pids{pids}/pids.max"
seen["pids_max"] = open(limit).read().strip() if os.path.exists(limit) else None
open(os.path.join(sys.argv[1], "seen.json"), "w").write(json.dumps(seen))
"""


def spare_alive(launcher: AsyncioProcessLauncher) -> bool:
    pid = launcher.spare_pid
    return pid is not None and Path(f"/proc/{pid}/stat").exists()


@pytest.fixture
def containment(tmp_path: Path) -> Iterator[Containment]:
    found = detect_containment(f"test:{tmp_path}")
    if found.kind is ContainmentKind.PROCESS_MARKER:
        pytest.skip("no writable cgroup on this machine")
    yield found
    for base in found.bases.values():
        for run in base.glob("run-*"):
            found.reap(run.name[4:])
        base.rmdir()


async def run_probe(
    tmp_path: Path, launcher: AsyncioProcessLauncher, *arguments: str
) -> tuple[TaskProcess, dict[str, Any]]:
    (tmp_path / "client.py").write_text(PROBE)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)

    async def on_message(message: object) -> None:
        return None

    task = TaskProcess.for_side(
        tmp_path,
        "client",
        work,
        arguments,
        launcher=launcher,
        env={"TEST_VALUE": "a b 'c' $HOME"},
        limits=Limits(pids=64),
        on_message=on_message,
        require_finished=False,
    )
    await task.start()
    await asyncio.wait_for(task.wait(), 20)
    seen: dict[str, Any] = json.loads((work / "seen.json").read_text())
    return task, seen


async def test_the_parked_spare_becomes_the_task_with_exactly_its_start(
    tmp_path: Path, containment: Containment
) -> None:
    # Prepare: a launcher with a spare parked in a new run's cgroups
    launcher = AsyncioProcessLauncher(containment=containment, spare=True)
    await launcher.prepare()
    parked = launcher.spare_pid
    assert parked is not None
    try:
        # Execute
        task, seen = await run_probe(tmp_path, launcher, "--lr", "0.1")

        # Assert: the same process, with the task's env (nothing of the shell's), folder,
        # arguments, /dev/null as stdin, in a run cgroup of this scope with its limit
        assert seen["pid"] == parked
        work = str(tmp_path / "work")
        expected = task_environment({"HOME": work, "TEST_VALUE": "a b 'c' $HOME"})
        assert seen["env"] == expected
        assert seen["cwd"] == str(tmp_path)
        assert seen["argv"] == [work, "--lr", "0.1"]
        assert seen["stdin"] == "/dev/null"
        controller = "pids" if "pids" in containment.bases else ""
        pids_base = containment.bases[controller]
        own = Path("/sys/fs/cgroup", controller, seen["cgroups"][controller].lstrip("/"))
        assert own.parent == pids_base and own.name.startswith("run-")
        assert seen["pids_max"] == "64"
        assert task.state is ProcessState.FINISHED
    finally:
        launcher.close()
    assert not list(pids_base.glob("run-*"))  # the task's and the next spare's are gone


async def test_a_start_the_line_cannot_carry_or_a_dead_spare_starts_the_ordinary_way(
    tmp_path: Path, containment: Containment
) -> None:
    launcher = AsyncioProcessLauncher(containment=containment, spare=True)
    await launcher.prepare()
    parked = launcher.spare_pid
    assert parked is not None
    try:
        # Execute: an argument with a newline
        _, seen = await run_probe(tmp_path, launcher, "two\nlines")

        # Assert: started without the spare, which stays parked
        assert seen["pid"] != parked and seen["argv"][1] == "two\nlines"
        assert launcher.spare_pid == parked

        # Execute: the spare dies; the next start
        os.kill(parked, signal.SIGKILL)
        for _ in range(200):
            if launcher.spare_pid is None or not spare_alive(launcher):
                break
            await asyncio.sleep(0.01)
        task, seen = await run_probe(tmp_path, launcher)

        # Assert: started the ordinary way, contained all the same
        assert seen["pid"] != parked and task.state is ProcessState.FINISHED
        assert seen["pids_max"] == "64"
    finally:
        launcher.close()
