"""The TaskProcess state machine against a fake launcher: every transition, no processes."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agata.errors import AgataError, ErrorCode
from agata.runtime.messages import Info, Model, OutputLine, Print, Stream, TaskMessage, Trigger
from agata.runtime.supervisor import ProcessState, TaskOutcome, TaskProcess

from .fakes import FakeHandle, FakeLauncher


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    for name in ("server.py", "client.py", "on_round.py"):
        (tmp_path / name).write_text("")
    return tmp_path


class Collector:
    def __init__(self) -> None:
        self.messages: list[TaskMessage] = []

    async def __call__(self, message: TaskMessage) -> None:
        self.messages.append(message)


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll a condition of the code under test (it offers no event for it)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def started(
    bundle: Path, launcher: FakeLauncher | None = None, **options: object
) -> tuple[TaskProcess, FakeHandle, Collector]:
    launcher = launcher or FakeLauncher()
    collector = Collector()
    settings: dict[str, object] = {"grace": 0.1, "finish_grace": 0.1, "drain_timeout": 0.1}
    settings.update(options)
    task = TaskProcess.for_side(
        bundle,
        "client",
        "/work/t1",
        ["--rounds", "2"],
        launcher=launcher,
        on_message=collector,
        **settings,
    )
    await task.start()
    return task, launcher.handles[-1], collector


# -- STARTING -------------------------------------------------------------------------


async def test_starting_to_running_spawns_the_side(bundle: Path) -> None:
    task, handle, _ = await started(bundle)

    assert task.state is ProcessState.RUNNING
    assert handle.argv == [sys.executable, "client.py", "/work/t1", "--rounds", "2"]
    assert handle.cwd == bundle
    assert handle.env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert handle.env["PYTHONUNBUFFERED"] == "1"
    assert handle.env["HOME"] == "/work/t1"
    assert not any("TOKEN" in name for name in handle.env)
    assert (task.pid, task.pgid) == (handle.pid, handle.pgid)


async def test_starting_to_failed_when_the_script_is_missing(tmp_path: Path) -> None:
    task = TaskProcess.for_side(tmp_path, "server", "/w", launcher=FakeLauncher())

    with pytest.raises(AgataError) as raised:
        await task.start()

    assert raised.value.code is ErrorCode.NOT_FOUND
    assert task.state is ProcessState.FAILED
    assert await task.wait() == TaskOutcome(
        ProcessState.FAILED, f"no server.py in {tmp_path}", None
    )


async def test_starting_to_failed_when_spawn_fails(bundle: Path) -> None:
    launcher = FakeLauncher()
    launcher.fail = True
    task = TaskProcess.for_side(bundle, "server", "/w", launcher=launcher)

    with pytest.raises(AgataError) as raised:
        await task.start()

    assert raised.value.code is ErrorCode.INTERNAL
    outcome = await task.wait()
    assert (outcome.state, outcome.exit_code) == (ProcessState.FAILED, None)
    assert "no such interpreter" in outcome.reason


async def test_starting_to_stopped_when_stopped_before_start(bundle: Path) -> None:
    task = TaskProcess.for_side(bundle, "server", "/w", launcher=FakeLauncher())

    outcome = await task.stop()

    assert outcome == TaskOutcome(ProcessState.STOPPED, "stopped before it started", None)
    with pytest.raises(AgataError) as raised:
        await task.start()
    assert raised.value.code is ErrorCode.CONFLICT


async def test_stop_while_spawning_stops_right_after_spawn(bundle: Path) -> None:
    launcher = FakeLauncher()
    launcher.gate = asyncio.Event()
    task = TaskProcess.for_side(bundle, "server", "/w", launcher=launcher, grace=0.1)
    starting = asyncio.create_task(task.start())
    await asyncio.sleep(0)  # start() has begun, the process does not exist yet
    task.request_stop()

    launcher.gate.set()
    await starting
    outcome = await task.wait()

    assert outcome.state is ProcessState.STOPPED
    assert launcher.handles[0].signals == [signal.SIGTERM]


async def test_start_twice_is_a_conflict(bundle: Path) -> None:
    task, _, _ = await started(bundle)

    with pytest.raises(AgataError) as raised:
        await task.start()

    assert raised.value.code is ErrorCode.CONFLICT


def test_invalid_side_and_script_are_refused(bundle: Path) -> None:
    with pytest.raises(AgataError):
        TaskProcess.for_side(bundle, "../evil", "/w")
    with pytest.raises(AgataError):
        TaskProcess(bundle, "sub/client.py")
    with pytest.raises(AgataError):
        TaskProcess(bundle, "client.sh")


# -- RUNNING --------------------------------------------------------------------------


async def test_running_to_stopping_to_finished_on_finished(bundle: Path) -> None:
    task, handle, collector = await started(bundle)

    handle.send(type="info", info="Started")
    handle.send(type="model", round=1, acc=0.5)
    handle.send(type="info", info="Finished")
    await until(lambda: task.state is ProcessState.STOPPING)
    handle.exit(0)  # exits by itself within finish_grace
    outcome = await task.wait()

    assert outcome == TaskOutcome(ProcessState.FINISHED, "reported Finished", 0)
    assert collector.messages == [Info("Started"), Model(1, {"acc": 0.5}), Info("Finished")]
    assert handle.signals == []  # never needed SIGTERM
    assert handle.signals_after_exit == [signal.SIGKILL]  # the rest of the group


async def test_finished_but_lingering_gets_sigterm_after_finish_grace(bundle: Path) -> None:
    task, handle, _ = await started(bundle)

    handle.send(type="info", info="Finished")
    outcome = await task.wait()

    assert outcome == TaskOutcome(ProcessState.FINISHED, "reported Finished", -signal.SIGTERM)
    assert handle.signals == [signal.SIGTERM]


async def test_running_to_stopping_to_failed_on_error(bundle: Path) -> None:
    task, handle, collector = await started(bundle)

    handle.send(type="error", exception="ValueError: no data")
    outcome = await task.wait()

    assert outcome == TaskOutcome(ProcessState.FAILED, "ValueError: no data", -signal.SIGTERM)
    assert handle.signals == [signal.SIGTERM]
    assert collector.messages[-1].kind == "error"


async def test_running_to_failed_on_exit_without_finished(bundle: Path) -> None:
    task, handle, _ = await started(bundle)

    handle.send(type="info", info="Started")
    handle.exit(3)
    outcome = await task.wait()

    assert outcome == TaskOutcome(
        ProcessState.FAILED, "exited with code 3 without reporting Finished", 3
    )
    assert handle.signals_after_exit == [signal.SIGKILL]


async def test_running_to_failed_when_killed_by_a_signal(bundle: Path) -> None:
    task, handle, _ = await started(bundle)

    handle.exit(-signal.SIGKILL)
    outcome = await task.wait()

    assert outcome == TaskOutcome(ProcessState.FAILED, "killed by signal SIGKILL", -9)


async def test_running_to_finished_for_a_script_exiting_zero(bundle: Path) -> None:
    task, handle, _ = await started(bundle, require_finished=False)

    handle.exit(0)

    assert await task.wait() == TaskOutcome(ProcessState.FINISHED, "exited with code 0", 0)


async def test_running_to_stopping_to_stopped_on_stop(bundle: Path) -> None:
    task, handle, _ = await started(bundle)

    outcome = await task.stop()

    assert outcome == TaskOutcome(ProcessState.STOPPED, "stopped by owner", -signal.SIGTERM)
    assert handle.signals == [signal.SIGTERM]


async def test_stop_escalates_to_sigkill_after_grace(bundle: Path) -> None:
    launcher = FakeLauncher(ends_on=frozenset())  # ignores SIGTERM
    task, handle, _ = await started(bundle, launcher)

    outcome = await task.stop(grace=0.05)

    assert outcome == TaskOutcome(ProcessState.STOPPED, "stopped by owner", -signal.SIGKILL)
    assert handle.signals == [signal.SIGTERM, signal.SIGKILL]


# -- STOPPING -------------------------------------------------------------------------


async def test_stopping_first_cause_wins(bundle: Path) -> None:
    task, handle, _ = await started(bundle)

    handle.send(type="info", info="Finished")
    handle.send(type="error", exception="late error")
    await until(lambda: task.state is ProcessState.STOPPING)
    handle.exit(1)
    outcome = await task.wait()

    assert outcome == TaskOutcome(ProcessState.FINISHED, "reported Finished", 1)


async def test_stop_while_waiting_for_a_voluntary_exit_escalates(bundle: Path) -> None:
    task, handle, _ = await started(bundle, finish_grace=30.0)
    handle.send(type="info", info="Finished")
    await until(lambda: task.state is ProcessState.STOPPING)

    outcome = await asyncio.wait_for(task.stop(), timeout=2)

    assert outcome.state is ProcessState.FINISHED  # stopping does not undo "Finished"
    assert handle.signals == [signal.SIGTERM]


async def test_error_while_stopping_by_owner_stays_stopped(bundle: Path) -> None:
    launcher = FakeLauncher(ends_on=frozenset())
    task, handle, _ = await started(bundle, launcher)
    task.request_stop()
    handle.send(type="error", exception="KeyboardInterrupt")
    await asyncio.sleep(0.01)
    handle.exit(1)

    assert (await task.wait()).state is ProcessState.STOPPED


# -- terminal -------------------------------------------------------------------------


async def test_terminal_states_ignore_everything(bundle: Path) -> None:
    task, handle, _ = await started(bundle)
    handle.exit(3)
    first = await task.wait()

    second = await task.stop()

    assert second == first
    assert task.state is ProcessState.FAILED


# -- output handling ------------------------------------------------------------------


async def test_messages_arrive_in_order_and_stderr_is_log(bundle: Path) -> None:
    task, handle, collector = await started(bundle, tail_lines=3)

    handle.write("plain 1\n")
    handle.write("traceback 1\n", "stderr")
    handle.send(type="print", message="hi")
    handle.write("no newline at the end")
    handle.exit(0)
    await task.wait()

    stdout = [m for m in collector.messages if getattr(m, "stream", None) != Stream.STDERR]
    assert stdout == [
        OutputLine(Stream.STDOUT, "plain 1"),
        Print("hi"),
        OutputLine(Stream.STDOUT, "no newline at the end"),
    ]
    assert OutputLine(Stream.STDERR, "traceback 1") in collector.messages
    assert len(task.tail()) == 3  # the ring buffer keeps the last 3
    assert OutputLine(Stream.STDOUT, "no newline at the end") in task.tail()


async def test_a_failing_callback_does_not_disturb_supervision(bundle: Path) -> None:
    seen: list[TaskMessage] = []

    async def callback(message: TaskMessage) -> None:
        seen.append(message)
        raise RuntimeError("owner bug")

    task = TaskProcess.for_side(
        bundle, "client", "/w", launcher=FakeLauncher(), on_message=callback
    )
    await task.start()
    fake = task._handle
    assert isinstance(fake, FakeHandle)
    fake.send(type="info", info="Started")
    fake.send(type="info", info="Finished")
    fake.exit(0)

    assert (await task.wait()).state is ProcessState.FINISHED
    assert len(seen) == 2


async def test_stop_from_the_callback_is_refused_request_stop_works(bundle: Path) -> None:
    errors: list[AgataError] = []
    task: TaskProcess

    async def callback(message: TaskMessage) -> None:
        try:
            await task.stop()
        except AgataError as exc:
            errors.append(exc)
        task.request_stop()

    launcher = FakeLauncher()
    task = TaskProcess.for_side(bundle, "client", "/w", launcher=launcher, on_message=callback)
    await task.start()
    launcher.handles[0].write("anything\n")

    outcome = await asyncio.wait_for(task.wait(), timeout=2)

    assert outcome.state is ProcessState.STOPPED
    assert errors and errors[0].code is ErrorCode.CONFLICT


async def test_output_held_open_after_exit_is_abandoned(bundle: Path) -> None:
    launcher = FakeLauncher(eof_on_exit=False)  # an escaped grandchild holds the pipes
    task, handle, _ = await started(bundle, launcher)

    handle.exit(3)
    outcome = await asyncio.wait_for(task.wait(), timeout=2)

    assert outcome.state is ProcessState.FAILED


async def test_long_lines_are_cut_in_constant_memory(bundle: Path) -> None:
    task, handle, collector = await started(bundle)

    handle.write("y" * 1_000_000 + "\nshort\n")
    handle.exit(0)
    await task.wait()

    long, short = collector.messages
    assert isinstance(long, OutputLine) and long.text.startswith("y" * 100)
    assert len(long.text) < 17 * 1024
    assert short == OutputLine(Stream.STDOUT, "short")


# -- triggers -------------------------------------------------------------------------


async def test_trigger_runs_the_bundle_script(bundle: Path) -> None:
    task, handle, collector = await started(bundle)
    launcher = task._launcher
    assert isinstance(launcher, FakeLauncher)

    handle.send(type="trigger", trigger_name="on_round", trigger_arguments="a 'b c'")
    await until(lambda: len(launcher.handles) == 2)
    trigger = launcher.handles[1]
    trigger.exit(0)
    await task.wait_triggers()

    assert trigger.argv == [sys.executable, "on_round.py", "a", "b c"]
    assert trigger.cwd == bundle
    assert collector.messages == [Trigger("on_round", ("a", "b c"))]


@pytest.mark.parametrize(
    ("name", "problem"),
    [("../server", "not a plain name"), ("missing", "no missing.py in the bundle")],
)
async def test_invalid_triggers_become_notes(bundle: Path, name: str, problem: str) -> None:
    task, handle, collector = await started(bundle)

    handle.send(type="trigger", trigger_name=name)
    handle.send(type="info", info="Finished")
    handle.exit(0)
    await task.wait()

    assert collector.messages[1] == OutputLine(
        Stream.SUPERVISOR, f"trigger {name!r} refused: {problem}"
    )
    assert len(task._launcher.handles) == 1  # type: ignore[attr-defined]


async def test_failed_trigger_is_reported_and_stop_ends_triggers(bundle: Path) -> None:
    task, handle, collector = await started(bundle)
    launcher = task._launcher
    assert isinstance(launcher, FakeLauncher)

    handle.send(type="trigger", trigger_name="on_round")
    await until(lambda: len(launcher.handles) == 2)
    launcher.handles[1].exit(2)
    await task.wait_triggers()
    handle.send(type="trigger", trigger_name="on_round")
    await until(lambda: len(launcher.handles) == 3)
    await task.stop()

    assert (
        OutputLine(
            Stream.SUPERVISOR,
            "trigger on_round failed: exited with code 2 without reporting Finished",
        )
        in collector.messages
    )
    assert launcher.handles[2].signals == [signal.SIGTERM]
