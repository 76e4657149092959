"""The real OS boundary: spawn failures, leftover process groups, backpressure."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from agata.errors import AgataError, ErrorCode
from agata.runtime.containment import Containment, ContainmentKind
from agata.runtime.messages import TaskMessage
from agata.runtime.process import (
    AsyncioProcessLauncher,
    group_members,
    kill_process_group,
    task_environment,
)
from agata.runtime.supervisor import ProcessState, TaskProcess

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups, /proc")

SLEEPER = "import subprocess, time\nsubprocess.Popen(['sleep', '1000'])\ntime.sleep(60)\n"


def test_task_environment_overrides() -> None:
    env = task_environment(
        {"X": "1", "PYTHONUNBUFFERED": "0"},
        base={"PATH": "/bin", "AGATA_BUS_URL": "amqp://u:secret@h/", "DB_PASSWORD": "x"},
    )

    assert env == {
        "PATH": "/bin",
        "FLWR_TELEMETRY_ENABLED": "0",
        "PYTHONUNBUFFERED": "0",
        "X": "1",
    }


async def test_an_interpreter_that_cannot_start_fails_the_task(tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text("")
    task = TaskProcess.for_side(tmp_path, "server", "w", python=str(tmp_path / "nope"))

    with pytest.raises(AgataError) as raised:
        await task.start()

    assert raised.value.code is ErrorCode.INTERNAL
    assert task.state is ProcessState.FAILED


async def test_kill_process_group_checks_the_token(tmp_path: Path) -> None:
    (tmp_path / "client.py").write_text(SLEEPER)
    marker = Containment(ContainmentKind.PROCESS_MARKER)
    launcher = AsyncioProcessLauncher(containment=marker)
    task = TaskProcess.for_side(tmp_path, "client", "w", launcher=launcher)
    await task.start()
    assert task.pgid is not None
    await asyncio.sleep(0.3)  # let it start its grandchild
    members = group_members(task.pgid)
    assert members is not None and len(members) == 2

    assert kill_process_group(task.pgid, token="not-ours") is False
    assert task.state is ProcessState.RUNNING

    assert kill_process_group(task.pgid, token=task.token) is True
    outcome = await asyncio.wait_for(task.wait(), timeout=5)

    assert outcome.reason == "killed by signal SIGKILL"
    assert group_members(task.pgid) == []
    assert kill_process_group(task.pgid, signal.SIGTERM) is False  # the group is gone


def test_kill_process_group_refuses_init_and_everyone() -> None:
    for pgid in (0, 1, -5):
        with pytest.raises(AgataError):
            kill_process_group(pgid)


async def test_a_slow_owner_holds_the_task_back(tmp_path: Path) -> None:
    """Backpressure: while the callback waits, the task blocks on its full pipe."""
    (tmp_path / "client.py").write_text(
        textwrap.dedent(
            """
            import sys
            for i in range(100_000):  # 10 MB
                sys.stdout.write("%098d\\n" % i)
            sys.stdout.flush()
            open("written", "w").close()
            """
        )
    )
    release = asyncio.Event()
    count = 0

    async def slow_owner(message: TaskMessage) -> None:
        nonlocal count
        count += 1
        await release.wait()

    task = TaskProcess.for_side(tmp_path, "client", "w", on_message=slow_owner)
    await task.start()
    await asyncio.sleep(1.0)

    assert not (tmp_path / "written").exists()
    assert count == 1

    release.set()
    outcome = await asyncio.wait_for(task.wait(), timeout=20)

    assert (tmp_path / "written").exists()
    assert count == 100_000
    assert outcome.exit_code == 0
