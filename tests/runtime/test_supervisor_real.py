"""The same scenarios as test_supervisor_fake, with real Python processes."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agata.errors import AgataError, ErrorCode
from agata.runtime.messages import Info, Model, OutputLine, Print, Stream, TaskMessage, Trigger
from agata.runtime.supervisor import ProcessState, TaskOutcome, TaskProcess

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups, /proc")


class Collector:
    """Keeps messages (or only counts them) and signals when a print arrives."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.messages: list[TaskMessage] = []
        self.count = 0
        self.printed: asyncio.Queue[str] = asyncio.Queue()

    async def __call__(self, message: TaskMessage) -> None:
        self.count += 1
        if self.keep:
            self.messages.append(message)
        if isinstance(message, Print):
            self.printed.put_nowait(message.message)

    async def next_print(self) -> str:
        return await asyncio.wait_for(self.printed.get(), timeout=10)


def write_task(bundle: Path, body: str, name: str = "client.py") -> None:
    header = "import json, os, signal, subprocess, sys, time\n"
    header += "from agata.runtime import TaskReporter\n"
    (bundle / name).write_text(header + textwrap.dedent(body))


def task_for(bundle: Path, collector: Collector, **options: Any) -> TaskProcess:
    settings: dict[str, Any] = {"grace": 1.0, "finish_grace": 1.0}
    settings.update(options)
    return TaskProcess.for_side(bundle, "client", bundle / "work", on_message=collector, **settings)


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll something outside the code under test (a file, /proc)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_started_model_finished(tmp_path: Path) -> None:
    write_task(
        tmp_path,
        """
        reporter = TaskReporter()
        assert sys.argv[1].endswith("work") and os.getcwd() == sys.path[0]
        assert os.environ["FLWR_TELEMETRY_ENABLED"] == "0"
        reporter.send_stats(1, 0.5)
        reporter.send_metrics(2, acc=0.75, loss=0.25, examples=100)
        reporter.finished()
        """,
    )
    collector = Collector()
    task = task_for(tmp_path, collector)

    await task.start()
    outcome = await task.wait()

    assert outcome == TaskOutcome(ProcessState.FINISHED, "reported Finished", 0)
    assert collector.messages == [
        Info("Started"),
        Model(1, {"acc": 0.5}),
        Model(2, {"acc": 0.75, "loss": 0.25, "examples": 100.0}),
        Info("Finished"),
    ]


async def test_error_message_fails_and_stops_the_task(tmp_path: Path) -> None:
    write_task(
        tmp_path,
        """
        TaskReporter().send_error(ValueError("no data"))
        time.sleep(60)
        """,
    )
    task = task_for(tmp_path, Collector())

    await task.start()
    outcome = await asyncio.wait_for(task.wait(), timeout=10)

    assert outcome == TaskOutcome(ProcessState.FAILED, "ValueError: no data", -signal.SIGTERM)


async def test_exit_code_without_finished(tmp_path: Path) -> None:
    write_task(tmp_path, "TaskReporter()\nsys.exit(3)\n")
    task = task_for(tmp_path, Collector())

    await task.start()
    outcome = await task.wait()

    assert outcome == TaskOutcome(
        ProcessState.FAILED, "exited with code 3 without reporting Finished", 3
    )


async def test_an_exit_without_finished_names_its_last_stderr_line(tmp_path: Path) -> None:
    # Prepare: a side whose import fails; another that colours its last stderr line
    write_task(tmp_path, "import no_such_module_x\n")
    coloured = tmp_path / "coloured"
    coloured.mkdir()
    write_task(
        coloured, "sys.stderr.write('\\x1b[31mERROR\\x1b[0m: server gone\\n\\n')\nsys.exit(2)\n"
    )

    # Execute
    outcomes = []
    for bundle in (tmp_path, coloured):
        task = task_for(bundle, Collector())
        await task.start()
        outcomes.append(await asyncio.wait_for(task.wait(), timeout=10))

    # Assert: the exit and the exception, without colours or blank lines
    assert outcomes[0] == TaskOutcome(
        ProcessState.FAILED,
        "exited with code 1: ModuleNotFoundError: No module named 'no_such_module_x'",
        1,
    )
    assert outcomes[1].reason == "exited with code 2: ERROR: server gone"


async def test_a_python_exception_leaves_its_traceback_in_the_tail(tmp_path: Path) -> None:
    write_task(tmp_path, "raise RuntimeError('dataset missing')\n")
    task = task_for(tmp_path, Collector())

    await task.start()
    outcome = await task.wait()

    assert outcome.exit_code == 1
    assert task.tail()[-1] == OutputLine(Stream.STDERR, "RuntimeError: dataset missing")


async def test_killed_from_outside(tmp_path: Path) -> None:
    write_task(tmp_path, "TaskReporter().send_print('ready')\ntime.sleep(60)\n")
    collector = Collector()
    task = task_for(tmp_path, collector)
    await task.start()
    await collector.next_print()
    assert task.pid is not None

    os.kill(task.pid, signal.SIGKILL)
    outcome = await asyncio.wait_for(task.wait(), timeout=10)

    assert outcome == TaskOutcome(ProcessState.FAILED, "killed by signal SIGKILL", -9)


async def test_stderr_only_output_does_not_deadlock(tmp_path: Path) -> None:
    write_task(
        tmp_path,
        """
        line = "e" * 99 + "\\n"
        for _ in range(50_000):  # 5 MB
            sys.stderr.write(line)
        sys.stderr.flush()
        TaskReporter(announce=False).finished()
        """,
    )
    collector = Collector(keep=False)
    task = task_for(tmp_path, collector, tail_lines=10)

    await task.start()
    outcome = await asyncio.wait_for(task.wait(), timeout=20)

    assert outcome.state is ProcessState.FINISHED
    assert collector.count == 50_001
    assert task.tail() == [OutputLine(Stream.STDERR, "e" * 99)] * 10


async def test_stdout_flood_keeps_memory_bounded(tmp_path: Path) -> None:
    write_task(
        tmp_path,
        """
        out = sys.stdout
        line = "o" * 99 + "\\n"
        block = line * 1000
        for _ in range(200):  # 20 MB
            out.write(block)
        out.write("no newline at the end, and long: " + "x" * 1_000_000)
        """,
    )
    collector = Collector(keep=False)
    task = task_for(tmp_path, collector, tail_lines=50)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    started = time.monotonic()

    await task.start()
    outcome = await asyncio.wait_for(task.wait(), timeout=25)

    assert time.monotonic() - started < 20
    assert outcome.exit_code == 0
    assert collector.count == 200_001
    tail = task.tail()
    assert len(tail) == 50
    assert isinstance(tail[-1], OutputLine) and len(tail[-1].text) < 17 * 1024
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mib < 15


async def test_sigterm_ignored_escalates_to_sigkill(tmp_path: Path) -> None:
    write_task(
        tmp_path,
        """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        TaskReporter().send_print("ready")
        time.sleep(60)
        """,
    )
    collector = Collector()
    task = task_for(tmp_path, collector)
    await task.start()
    await collector.next_print()
    started = time.monotonic()

    outcome = await task.stop(grace=0.3)

    assert outcome == TaskOutcome(ProcessState.STOPPED, "stopped by owner", -signal.SIGKILL)
    assert 0.3 <= time.monotonic() - started < 5


GRANDCHILD = """
reporter = TaskReporter()
child = subprocess.Popen(["sleep", "1000"])
reporter.send_print(str(child.pid))
if sys.argv[2:] == ["finish"]:
    reporter.finished()
    sys.exit(0)
time.sleep(60)
"""


async def test_grandchild_is_gone_after_stop(tmp_path: Path) -> None:
    write_task(tmp_path, GRANDCHILD)
    collector = Collector()
    task = task_for(tmp_path, collector)
    await task.start()
    grandchild = int(await collector.next_print())
    assert alive(grandchild)

    outcome = await task.stop()

    assert outcome.state is ProcessState.STOPPED
    assert await gone(grandchild)


async def test_grandchild_is_gone_after_normal_exit(tmp_path: Path) -> None:
    write_task(tmp_path, GRANDCHILD)
    collector = Collector()
    task = TaskProcess.for_side(
        tmp_path, "client", "work", ["finish"], on_message=collector, drain_timeout=1.0
    )
    await task.start()
    grandchild = int(await collector.next_print())

    outcome = await asyncio.wait_for(task.wait(), timeout=10)

    assert outcome == TaskOutcome(ProcessState.FINISHED, "reported Finished", 0)
    assert await gone(grandchild)


async def test_invalid_json_lines_and_original_string_numbers(tmp_path: Path) -> None:
    write_task(
        tmp_path,
        """
        print("{not json")
        print('{"type": "model"}')
        print('{"type": "model", "round": "abc", "acc": "0.1"}')
        print('{"type": "surprise"}')
        print(json.dumps({"type": "model", "round": "1", "acc": "0.5"}))  # as the original
        print(json.dumps({"type": "info", "info": "Finished"}))
        """,
    )
    collector = Collector()
    task = task_for(tmp_path, collector)

    await task.start()
    outcome = await task.wait()

    assert outcome.state is ProcessState.FINISHED
    assert collector.messages == [
        OutputLine(Stream.STDOUT, "{not json"),
        OutputLine(Stream.STDOUT, '{"type": "model"}'),
        OutputLine(Stream.STDOUT, '{"type": "model", "round": "abc", "acc": "0.1"}'),
        OutputLine(Stream.STDOUT, '{"type": "surprise"}'),
        Model(1, {"acc": 0.5}),
        Info("Finished"),
    ]


async def test_trigger_runs_its_script(tmp_path: Path) -> None:
    (tmp_path / "on_round.py").write_text(
        "import sys, pathlib\npathlib.Path('triggered.txt').write_text(repr(sys.argv[1:]))\n"
    )
    write_task(
        tmp_path,
        """
        reporter = TaskReporter()
        reporter.trigger("on_round", "--round 1")
        reporter.trigger("../escape")
        reporter.finished()
        """,
    )
    collector = Collector()
    task = task_for(tmp_path, collector)

    await task.start()
    await task.wait()
    await asyncio.wait_for(task.wait_triggers(), timeout=10)

    assert (tmp_path / "triggered.txt").read_text() == "['--round', '1']"
    assert Trigger("on_round", ("--round", "1")) in collector.messages
    assert (
        OutputLine(Stream.SUPERVISOR, "trigger '../escape' refused: not a plain name")
        in collector.messages
    )


SUPERVISOR = """
import asyncio, sys
from agata.runtime import TaskProcess

async def main() -> None:
    task = TaskProcess.for_side(sys.argv[1], "client", "work")
    await task.start()
    print(task.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_task_dies_with_a_killed_supervisor(tmp_path: Path) -> None:
    # The task writes nothing once the supervisor may be dead (a write to the broken
    # pipe would end it anyway); it only leaves a file when it is ready.
    write_task(tmp_path, "open('ready', 'w').close()\ntime.sleep(60)\n")
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SUPERVISOR, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    assert supervisor.stdout is not None
    try:
        task_pid = int(await asyncio.wait_for(supervisor.stdout.readline(), 10))
        await until((tmp_path / "ready").exists)
        assert alive(task_pid)

        supervisor.kill()  # SIGKILL: no chance to clean up
        await supervisor.wait()

        assert await gone(task_pid)
    finally:
        if supervisor.returncode is None:
            supervisor.kill()
            await supervisor.wait()


async def test_a_grandchild_escaping_the_group_does_not_hang_supervision(
    tmp_path: Path,
) -> None:
    write_task(
        tmp_path,
        """
        reporter = TaskReporter()
        child = subprocess.Popen(["sleep", "1000"], start_new_session=True)  # own group
        reporter.send_print(str(child.pid))
        reporter.finished()
        """,
    )
    collector = Collector()
    task = task_for(tmp_path, collector, drain_timeout=0.3)
    await task.start()
    escaped = int(await collector.next_print())
    try:
        outcome = await asyncio.wait_for(task.wait(), timeout=5)

        assert outcome == TaskOutcome(ProcessState.FINISHED, "reported Finished", 0)
    finally:
        os.kill(escaped, signal.SIGKILL)


async def test_a_program_outside_the_bundle_runs_in_the_bundle_folder(tmp_path: Path) -> None:
    """``program``: an installed script (Flower's ``flower-supernode``) instead of a
    bundle's ``.py``; the bundle folder stays the working directory."""
    program = tmp_path / "bin" / "installed-tool"
    program.parent.mkdir()
    program.write_text("import os, sys\nprint(os.getcwd(), *sys.argv[1:], flush=True)\n")
    work = tmp_path / "work"
    work.mkdir()
    seen: list[str] = []

    async def on_message(message: object) -> None:
        seen.append(getattr(message, "text", ""))

    process = TaskProcess(
        work, "tool.py", ["--flag"], program=program, on_message=on_message,
        require_finished=False,
    )  # fmt: skip
    await process.start()
    outcome = await process.wait()

    assert outcome.state is ProcessState.FINISHED
    assert seen == [f"{work} --flag"]


async def test_a_missing_or_relative_program_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(AgataError) as relative:
        TaskProcess(tmp_path, "tool.py", program="bin/tool")
    process = TaskProcess(tmp_path, "tool.py", program=tmp_path / "absent")
    with pytest.raises(AgataError) as missing:
        await process.start()

    assert "absolute path" in relative.value.message
    assert missing.value.code is ErrorCode.NOT_FOUND
    assert "is not installed" in missing.value.message
