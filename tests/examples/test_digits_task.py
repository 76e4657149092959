"""The example task bundles, run for real: a Flower server and clients on 127.0.0.1.

Each bundle is copied to a temporary folder first (as the task runtime does with an
uploaded bundle), and every process is started the way the runtime starts it:
``python <side>.py <work_path> [arguments...]`` with the bundle folder as cwd.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.flower,
    pytest.mark.skipif(
        not all(importlib.util.find_spec(name) for name in ("flwr", "numpy", "sklearn")),
        reason="needs the flower extra: pip install 'agata[flower]'",
    ),
]

TASKS = Path(__file__).resolve().parents[2] / "examples" / "tasks"
DEADLINE = 60.0  # seconds for a whole 3-round session


@dataclass
class Task:
    """One started task process; its stdout and stderr go to files."""

    name: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still running after {timeout:.0f} s\n{self.logs()}")

    def raw_lines(self) -> list[str]:
        return self.stdout.read_text(encoding="utf-8").splitlines()

    def messages(self) -> list[dict[str, Any]]:
        """The stdout lines, each of which MUST be one JSON object."""
        messages = []
        for line in self.raw_lines():
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"{self.name}: stray stdout line {line!r}\n{self.logs()}")
            assert isinstance(message, dict), f"{self.name}: not an object: {line!r}"
            messages.append(message)
        return messages

    def logs(self) -> str:
        stderr = self.stderr.read_text(encoding="utf-8", errors="replace")
        return f"--- {self.name} stdout\n{self.stdout.read_text()}\n--- stderr\n{stderr[-4000:]}"


class Launcher:
    """Starts task processes in their own process groups and kills what is left."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._tasks: list[Task] = []
        self.env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}

    def bundle(self, name: str) -> Path:
        """A copy of ``examples/tasks/<name>`` (its files only, as uploaded)."""
        target = self._tmp_path / f"task_{name}"
        target.mkdir()
        for source in (TASKS / name).iterdir():
            if source.is_file() and source.suffix != ".pyc":
                shutil.copy2(source, target / source.name)
        return target

    @property
    def work_path(self) -> Path:
        """The work folder every side is started with."""
        return self._tmp_path / "work"

    def start(self, name: str, bundle: Path, script: str, *arguments: str) -> Task:
        work_path = self.work_path
        work_path.mkdir(exist_ok=True)
        stdout = self._tmp_path / f"{name}.out"
        stderr = self._tmp_path / f"{name}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, script, str(work_path), *arguments],
                cwd=bundle,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        task = Task(name, process, stdout, stderr)
        self._tasks.append(task)
        return task

    def kill_all(self) -> None:
        for task in self._tasks:
            if task.process.poll() is None:
                try:
                    os.killpg(task.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                task.process.wait(timeout=10)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.kill_all()


def free_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def wait_for_port(address: str, task: Task, timeout: float) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            if task.process.poll() is not None:
                break
            time.sleep(0.1)
    pytest.fail(f"{task.name}: nothing listens on {address}\n{task.logs()}")


def wait_for_line(task: Task, predicate: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        complete = task.stdout.read_text(encoding="utf-8").split("\n")[:-1]
        for line in complete:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue  # messages() reports stray lines once the process has ended
            if predicate(message):
                return message
        if task.process.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"{task.name}: expected line not seen\n{task.logs()}")


def test_digits_three_rounds_two_clients(launcher: Launcher) -> None:
    # Prepare
    bundle = launcher.bundle("digits")
    address = free_address()

    # Execute
    started = time.monotonic()
    server = launcher.start(
        "server",
        bundle,
        "server.py",
        *("--address", address, "--rounds", "3", "--min-clients", "2"),
        *("--accuracy-trigger", "0.9"),
    )
    clients = [
        launcher.start(
            f"client{index}",
            bundle,
            "client.py",
            *("--address", address, "--client-index", str(index), "--num-clients", "2"),
        )
        for index in range(2)
    ]
    codes = {
        task.name: task.wait(DEADLINE - (time.monotonic() - started)) for task in [server, *clients]
    }
    elapsed = time.monotonic() - started

    # Assert
    logs = "\n".join(task.logs() for task in [server, *clients])
    assert codes == {"server": 0, "client0": 0, "client1": 0}, logs
    messages = server.messages()
    assert messages[0] == {"type": "info", "info": "Started"}
    assert messages[-1] == {"type": "info", "info": "Finished"}
    models = [m for m in messages if m["type"] == "model"]
    assert [m["round"] for m in models] == [1, 2, 3]
    assert all(m["examples"] > 0 and m["loss"] > 0 for m in models)
    assert models[-1]["acc"] > 0.85, models
    triggers = [m for m in messages if m["type"] == "trigger"]
    assert len(triggers) == 1
    assert triggers[0]["trigger_name"] == "accuracy_reached"
    assert float(triggers[0]["trigger_arguments"]) >= 0.9
    assert not [m for m in messages if m["type"] == "error"]
    # The final global model is saved, whole, then announced as the run's artifact
    assert {"type": "artifact", "path": "global_model.npz"} in messages
    import numpy as np

    with np.load(launcher.work_path / "global_model.npz") as saved:
        model = [saved[f"p{i}"] for i in range(len(saved.files))]
    assert model and all(p.size and np.isfinite(p).all() for p in model)
    assert not list(launcher.work_path.glob(".*.part"))
    for client in clients:
        client_messages = client.messages()
        assert client_messages[0] == {"type": "info", "info": "Started"}
        assert client_messages[-1] == {"type": "info", "info": "Finished"}
        assert [m["round"] for m in client_messages if m["type"] == "model"] == [1, 2, 3]
    print(f"3 rounds, 2 clients: {elapsed:.1f} s, accuracy {models[-1]['acc']:.4f}")


def test_accuracy_reached_trigger_writes_its_file(launcher: Launcher) -> None:
    # Prepare
    bundle = launcher.bundle("digits")

    # Execute
    result = subprocess.run(
        [sys.executable, "accuracy_reached.py", "0.9321"],
        cwd=bundle,
        env=launcher.env,
        capture_output=True,
        text=True,
        timeout=30,
    )

    # Assert
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 1 and lines[0]["type"] == "print", result.stdout
    fired = json.loads((bundle / "trigger_fired.json").read_text())
    assert fired["accuracy"] == pytest.approx(0.9321)
    assert fired["trigger"] == "accuracy_reached"
    assert abs(fired["unix_time"] - time.time()) < 60


def test_digits_client_without_work_path_fails_cleanly_without_server(
    launcher: Launcher,
) -> None:
    # Prepare: "cli" instead of a work path, as the original hand-started client
    bundle = launcher.bundle("digits")
    address = free_address()  # nobody listens there

    # Execute
    result = subprocess.run(
        [sys.executable, "client.py", "cli", "--address", address, "--max-wait", "1"],
        cwd=bundle,
        env=launcher.env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Assert
    assert result.returncode == 1, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [m["type"] for m in lines] == ["info", "error"], result.stdout
    assert address in lines[1]["exception"]


def test_digits_server_reports_a_bad_argument_as_an_error(launcher: Launcher) -> None:
    # Prepare
    bundle = launcher.bundle("digits")

    # Execute
    server = launcher.start("server", bundle, "server.py", "--rounds", "0")
    code = server.wait(30)

    # Assert
    assert code == 1, server.logs()
    messages = server.messages()
    assert [m["type"] for m in messages] == ["info", "error"]
    assert "--rounds" in messages[1]["exception"]


def test_digits_server_reports_a_taken_port_as_an_error(launcher: Launcher) -> None:
    # Prepare: Flower calls sys.exit() when its port is taken
    bundle = launcher.bundle("digits")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"

        # Execute
        server = launcher.start("server", bundle, "server.py", "--address", address)
        code = server.wait(30)

    # Assert
    assert code == 1, server.logs()
    messages = server.messages()
    assert [m["type"] for m in messages] == ["info", "error"]
    assert "already in use" in messages[1]["exception"]


def test_failing_task_client_errors_while_its_server_waits(launcher: Launcher) -> None:
    # Prepare
    bundle = launcher.bundle("failing")
    address = free_address()
    server = launcher.start(
        "server", bundle, "server.py", "--address", address, "--min-clients", "2"
    )

    # Execute
    client = launcher.start("client", bundle, "client.py", "--address", address)
    code = client.wait(30)

    # Assert
    assert code != 0, client.logs()
    messages = client.messages()
    assert messages[0] == {"type": "info", "info": "Started"}
    assert messages[-1]["type"] == "error" and messages[-1]["exception"], messages
    wait_for_line(server, lambda m: m == {"type": "info", "info": "Started"}, timeout=30)
    wait_for_port(address, server, timeout=30)
    assert server.process.poll() is None, server.logs()  # still waiting for clients
    # Ended as the task runtime ends a side: SIGTERM, then SIGKILL after a grace period.
    # Flower's start_server does not always exit on SIGTERM while it waits for clients
    # (its graceful exit hung in ~1 of 5 full-suite runs); the runtime's SIGKILL covers it.
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.wait(30)
    assert not [m for m in server.messages() if m["type"] in ("error", "model")]
