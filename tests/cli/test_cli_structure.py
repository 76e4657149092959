"""The CLI's structure: imports run one way, the benchmarks live in one group,
SIGINT/SIGTERM handling is the one helper of agata.cli.runner, and the operator
commands' shared options are declared once (agata.cli.cloud_client.cloud_options)."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
from pathlib import Path

import typer
from typer.main import get_command
from typer.testing import CliRunner

import agata.cli
from agata.cli.cloud_client import CloudOptions, cloud_options
from agata.cli.main import GROUPS, app
from agata.cli.runner import on_stop_signals

CLI = Path(agata.cli.__file__).parent
SHARED_OPTIONS = {"cloud_url", "token", "data_dir", "cafile", "json_out"}


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


def test_cloud_options_hand_the_shared_options_to_the_command_as_one_value() -> None:
    seen: list[tuple[str, CloudOptions]] = []

    @cloud_options
    def show(name: str, *, options: CloudOptions) -> None:
        seen.append((name, options))

    def other() -> None:
        """A second command, so that "show" stays a subcommand."""

    tiny = typer.Typer()
    tiny.command("show")(show)
    tiny.command("other")(other)
    result = CliRunner().invoke(
        tiny, ["show", "t1", "--cloud-url", "https://c:1", "--json"], env={}
    )

    assert result.exit_code == 0, result.output
    [(name, options)] = seen
    assert name == "t1"
    assert (options.cloud_url, options.token, options.cafile) == ("https://c:1", None, None)
    assert options.data_dir == Path("agata-data") and options.json_out is True


def test_every_operator_command_takes_the_shared_options_alike() -> None:
    """task, run and device (but enroll, which runs on a device) take --cloud-url,
    --token, --data-dir, --ca-file and --json, each declared the same way, last."""
    cli = get_command(app)
    declared: dict[str, list[tuple[object, ...]]] = {}
    for group in ("task", "run", "device"):
        commands = cli.commands[group].commands  # type: ignore[attr-defined]
        for name, command in commands.items():
            if (group, name) == ("device", "enroll"):
                continue
            tail = command.params[-len(SHARED_OPTIONS) :]
            assert {p.name for p in tail} == SHARED_OPTIONS, (group, name)
            declared[f"{group} {name}"] = [
                (p.name, p.opts, p.default, p.envvar, getattr(p, "help", None)) for p in tail
            ]

    assert len(declared) == 18
    first = next(iter(declared.values()))
    assert all(options == first for options in declared.values()), declared
