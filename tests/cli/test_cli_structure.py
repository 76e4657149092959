"""The CLI's structure: imports run one way, the benchmarks live in one group, and
SIGINT/SIGTERM handling is the one helper of agata.cli.runner."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
from pathlib import Path

from typer.testing import CliRunner

import agata.cli
from agata.cli.main import GROUPS, app
from agata.cli.runner import on_stop_signals

CLI = Path(agata.cli.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_command_module_imports_main() -> None:
    """main imports the *_cmd modules; none of them (nor a helper) imports main back."""
    offenders = {
        path.name
        for path in CLI.glob("*.py")
        if path.name != "main.py" and "agata.cli.main" in _imported_modules(path)
    }

    assert offenders == set()


def test_command_modules_import_no_other_command_module() -> None:
    """A *_cmd module uses only the leaf helpers, so adding a group adds no edge."""
    for path in CLI.glob("*_cmd.py"):
        others = {
            name
            for name in _imported_modules(path)
            if name.startswith("agata.cli.") and name.endswith("_cmd")
        }
        assert others == set(), path.name


def test_every_benchmark_is_a_command_of_bench_cmd() -> None:
    from agata.cli.bench_cmd import bench_app

    names = {command.name for command in bench_app.registered_commands}

    assert GROUPS["bench"] is bench_app
    assert names >= {
        "bus", "containment", "environments", "all", "cloud", "devices", "edge",
        "console", "load", "runs",
    }  # fmt: skip
    for path in CLI.glob("*_cmd.py"):
        if path.name != "bench_cmd.py":
            assert "bench_app" not in path.read_text(), path.name


def test_help_lists_every_group_and_command() -> None:
    result = CliRunner().invoke(app, ["--help"])

    assert result.exit_code == 0, result.output
    for name in [*GROUPS, "demo", "experiment", "simulate", "version"]:
        assert name in result.output


def test_stop_signals_call_stop_in_the_loop() -> None:
    """SIGTERM and SIGINT each reach the callback given to on_stop_signals."""

    async def main() -> list[str]:
        seen: list[str] = []
        stopped = asyncio.Event()

        def stop() -> None:
            seen.append("stop")
            if len(seen) == 2:
                stopped.set()

        on_stop_signals(stop)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.wait_for(stopped.wait(), 5)
        finally:
            loop = asyncio.get_running_loop()
            loop.remove_signal_handler(signal.SIGTERM)
            loop.remove_signal_handler(signal.SIGINT)
        return seen

    assert asyncio.run(main()) == ["stop", "stop"]
