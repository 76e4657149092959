"""Containment with real processes: the red-team probe's escapes, and the limits.

Every test runs against the containment this machine allows (a cgroup where one is
writable) and against the ``process-marker`` fallback, which is always there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agata.runtime.containment import Containment, ContainmentKind, detect_containment
from agata.runtime.limits import Limits
from agata.runtime.process import AsyncioProcessLauncher
from agata.runtime.supervisor import ProcessState, TaskProcess

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups, /proc")

# A client side that leaves its group twice: a setsid child and a double-forked
# grandchild; both write their pid to pids.txt, then the side waits.
ESCAPER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    subprocess.Popen(["setsid", "sleep", "1000"])
    if os.fork() == 0:
        if os.fork() == 0:
            os.setsid()
            time.sleep(1000)
        os._exit(0)
    time.sleep(0.5)
    print("ready", flush=True)
    time.sleep(1000)
    """
)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def sleepers(marker: str) -> list[int]:
    """Live ``sleep 1000`` / escaper processes whose environment carries ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return [pid for pid in found if alive(pid) and pid != os.getpid()]


def containments() -> list[str]:
    return ["detected", "process-marker"]


@pytest.fixture(params=containments())
def containment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Containment]:
    if request.param == "process-marker":
        yield Containment(ContainmentKind.PROCESS_MARKER)
        return
    found = detect_containment(f"test:{tmp_path}")
    if found.kind is ContainmentKind.PROCESS_MARKER:
        pytest.skip("no writable cgroup on this machine")
    yield found
    for base in found.bases.values():
        for run in base.glob("run-*"):
            found.reap(run.name[4:])
        base.rmdir()


async def start_escaper(tmp_path: Path, containment: Containment, mark: str) -> TaskProcess:
    (tmp_path / "client.py").write_text(ESCAPER)
    ready = asyncio.Event()

    async def on_message(message: object) -> None:
        if "ready" in str(message):
            ready.set()

    task = TaskProcess.for_side(
        tmp_path,
        "client",
        tmp_path,
        launcher=AsyncioProcessLauncher(containment=containment),
        env={"TEST_MARK": mark},
        on_message=on_message,
        grace=1.0,
    )
    await task.start()
    await asyncio.wait_for(ready.wait(), 10)
    return task


async def test_setsid_and_double_fork_end_on_stop(tmp_path: Path, containment: Containment) -> None:
    mark = f"TEST_MARK=stop-{os.getpid()}-{time.time()}"
    task = await start_escaper(tmp_path, containment, mark.split("=")[1])
    before = sleepers(mark)
    assert len(before) == 3  # the side, its setsid child, its double-forked grandchild

    outcome = await asyncio.wait_for(task.stop(), 10)

    assert outcome.state is ProcessState.STOPPED
    assert [pid for pid in before if alive(pid)] == []


async def test_escapees_end_when_the_side_exits_by_itself(
    tmp_path: Path, containment: Containment
) -> None:
    mark = f"TEST_MARK=exit-{os.getpid()}-{time.time()}"
    task = await start_escaper(tmp_path, containment, mark.split("=")[1])
    before = sleepers(mark)
    assert task.pid is not None
    os.kill(task.pid, signal.SIGKILL)  # the side dies; its escapees must follow

    await asyncio.wait_for(task.wait(), 10)

    assert [pid for pid in before if alive(pid)] == []


SERVICE = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from agata.runtime.containment import Containment, ContainmentKind, detect_containment
    from agata.runtime.process import AsyncioProcessLauncher
    from agata.runtime.supervisor import TaskProcess

    async def main():
        bundle, scope, kind = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
        if kind == "process-marker":
            containment = Containment(ContainmentKind.PROCESS_MARKER)
        else:
            containment = detect_containment(scope)
        task = TaskProcess.for_side(
            bundle, "client", bundle, env={"TEST_MARK": sys.argv[4]},
            launcher=AsyncioProcessLauncher(containment=containment),
        )
        await task.start()
        print(task.token, flush=True)
        await asyncio.sleep(1000)

    asyncio.run(main())
    """
)


def test_a_killed_service_restarted_ends_the_escapees(
    tmp_path: Path, containment: Containment
) -> None:
    """The probe: SIGKILL of the service, then its restart reaps by the recorded run id."""
    (tmp_path / "client.py").write_text(ESCAPER)
    mark = f"restart-{os.getpid()}-{time.time()}"
    kind = str(containment.kind) if containment.kind is ContainmentKind.PROCESS_MARKER else "cg"
    scope = f"test:{tmp_path}"
    service = subprocess.Popen(
        [sys.executable, "-c", SERVICE, str(tmp_path), scope, kind, mark],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert service.stdout is not None
    run_id = service.stdout.readline().strip()
    deadline = time.monotonic() + 10
    while len(sleepers(f"TEST_MARK={mark}")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    service.kill()
    service.wait()
    time.sleep(0.3)
    survivors = sleepers(f"TEST_MARK={mark}")
    assert len(survivors) == 2  # PDEATHSIG ended the side; the escapees outlived it

    restarted = containment if kind != "cg" else detect_containment(scope)
    assert restarted.reap(run_id) >= 2

    assert [pid for pid in survivors if alive(pid)] == []


async def run_limited(tmp_path: Path, containment: Containment, code: str, limits: Limits):
    (tmp_path / "client.py").write_text(textwrap.dedent(code))
    task = TaskProcess.for_side(
        tmp_path,
        "client",
        tmp_path,
        launcher=AsyncioProcessLauncher(containment=containment),
        limits=limits,
        grace=1.0,
    )
    await task.start()
    return await asyncio.wait_for(task.wait(), 30)


async def test_a_fork_bomb_ends_with_the_pids_limit_named(
    tmp_path: Path, containment: Containment
) -> None:
    if "pids" not in containment.enforced:
        pytest.skip("no pids cgroup: RLIMIT_NPROC counts per user, not per run")
    outcome = await run_limited(
        tmp_path,
        containment,
        """
        import os, time
        children = []
        for _ in range(10_000):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
        """,
        Limits(pids=20),
    )

    assert outcome.state is ProcessState.FAILED
    assert "process limit of 20" in outcome.reason


async def test_memory_past_the_limit_ends_with_the_limit_named(
    tmp_path: Path, containment: Containment
) -> None:
    if "memory" not in containment.enforced:
        pytest.skip("no memory cgroup: RLIMIT_AS ends the run with a MemoryError only")
    outcome = await run_limited(
        tmp_path,
        containment,
        """
        blocks = []
        for _ in range(400):
            blocks.append(bytearray(1024 * 1024))
        """,
        Limits(memory_mb=64),
    )

    assert outcome.state is ProcessState.FAILED
    assert "memory limit of 64 MiB" in outcome.reason


async def test_the_wall_time_limit_ends_the_run(tmp_path: Path, containment: Containment) -> None:
    outcome = await run_limited(
        tmp_path, containment, "import time\ntime.sleep(60)\n", Limits(wall_seconds=0.5)
    )

    assert outcome.state is ProcessState.FAILED
    assert outcome.reason == "wall time limit of 0.5 s exceeded"


async def test_the_open_files_limit_applies_to_the_task(
    tmp_path: Path, containment: Containment
) -> None:
    outcome = await run_limited(
        tmp_path,
        containment,
        """
        import json, resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        print(json.dumps({"type": "error", "exception": f"nofile {soft} {hard}"}), flush=True)
        """,
        Limits(open_files=64),
    )

    assert outcome.reason == "nofile 64 64"
