"""``agata demo`` and ``agata experiment exp1|exp2`` (the benchmarks are in bench_cmd)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated

import typer

from agata.cli.logs import setup_logging

ExperimentName = Annotated[str, typer.Argument(help="exp1 or exp2", metavar="exp1|exp2")]


def demo(
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running", help="leave the cloud and the agent up; print the console URL"
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the results as JSON on stdout")
    ] = False,
    rounds: Annotated[int, typer.Option(min=1, max=100, help="Flower rounds")] = 3,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="keep the database and bundles here (default: temp)"),
    ] = None,
    task_dir: Annotated[
        Path | None, typer.Option("--task-dir", help="another bundle instead of digits")
    ] = None,
    timeout: Annotated[float, typer.Option(min=5, help="give up after this many seconds")] = 120,
    task: Annotated[
        str,
        typer.Option(
            "--task",
            help="digits (script task) or digits-app (the Flower App on Flower's "
            "Deployment Runtime; give it --timeout 300)",
        ),
    ] = "digits",
) -> None:
    """Experiment 1 on this machine: cloud, task, edge agent, two Flower clients."""
    if task not in ("digits", "digits-app"):
        raise typer.BadParameter(
            f"unknown task {task!r}: digits or digits-app", param_hint="--task"
        )

    _require_demo_extras("agata demo", own_task=task_dir is not None)
    from agata.demo.demo import run_demo

    setup_logging("WARNING")
    code = run_demo(
        rounds=rounds,
        data_dir=data_dir,
        keep_running=keep_running,
        as_json=as_json,
        timeout=timeout,
        task_dir=task_dir,
        task=task,
    )
    raise typer.Exit(code)


def experiment(
    name: ExperimentName,
    runs: Annotated[int, typer.Option(min=1, max=1000, help="number of runs")] = 10,
    bus: Annotated[str, typer.Option("--bus", help="memory:// or amqp://...")] = "memory://",
    db: Annotated[
        str, typer.Option("--db", help="sqlite:///... or postgresql://... (default: temp)")
    ] = "",
    out: Annotated[Path | None, typer.Option("--out", help="output folder")] = None,
    rounds: Annotated[int, typer.Option(min=1, max=100, help="Flower rounds")] = 1,
    agent_first: Annotated[
        bool,
        typer.Option("--agent-first", help="exp1: start the agent before the task (push)"),
    ] = False,
    timeout: Annotated[float, typer.Option(min=5, help="seconds per run")] = 120,
) -> None:
    """The original's experiment 1 or 2, N runs: events, raw times, mean ± 95% CI."""
    from rich.console import Console
    from rich.table import Table

    from agata.demo.experiment import ExperimentOptions, RunResult
    from agata.demo.processes import marked_environment
    from agata.demo.series import EXPERIMENTS, run_series, steps_of
    from agata.demo.timings import format_seconds, format_summary

    if name not in EXPERIMENTS:
        raise typer.BadParameter(f"choose exp1 or exp2, not {name!r}")
    _require_demo_extras(f"agata experiment {name}", own_task=False)
    setup_logging("WARNING")
    console = Console(highlight=False)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = out or Path("experiments-out") / f"{name}-{stamp}"
    options = ExperimentOptions(
        rounds=rounds, bus_url=bus, db_url=db, timeout=timeout, agent_first=agent_first
    )

    def progress(message: str) -> None:
        console.print(f"  [dim]{message}[/]")

    def on_run(number: int, result: RunResult) -> None:
        figures = ", ".join(
            f"{s.name} {format_seconds(result.durations.get(s.key))}" for s in steps_of(name)
        )
        verdict = "[green]ok[/]" if result.ok else f"[red]failed[/]: {result.error}"
        console.print(f"run {number}/{runs} {verdict} ({result.wall_seconds:.1f} s): {figures}")

    console.print(f"{name}: {runs} run(s) on {bus}, results in {folder}")
    with marked_environment():
        try:
            results, summary = run_series(name, runs, options, folder, progress, on_run)
        except KeyboardInterrupt:
            console.print(f"interrupted; the runs done so far are in {folder}")
            raise typer.Exit(130) from None
    table = Table(title=f"{name}: mean ± 95% CI over {summary[steps_of(name)[0].key].n} runs")
    table.add_column("step")
    table.add_column("mean ± 95% CI", justify="right")
    table.add_column("median", justify="right")
    table.add_column("n", justify="right")
    for step in steps_of(name):
        figure = summary[step.key]
        table.add_row(
            step.name, format_summary(figure), format_seconds(figure.median), str(figure.n)
        )
    console.print(table)
    console.print(f"files: {folder}")
    if (folder / "timeline.png").is_file():
        console.print(f"timeline: {folder / 'timeline.png'}", soft_wrap=True)
    failed = [r for r in results if not r.ok]
    if failed:
        raise typer.Exit(1)


def _require_demo_extras(command: str, *, own_task: bool) -> None:
    """Stop with one clear line when the cloud (or, for the example tasks, Flower) is not
    installed: the task processes would otherwise fail one by one with a traceback."""
    from agata.cli.extras import require_modules

    modules = ["fastapi", "uvicorn", "sqlalchemy"]
    if not own_task:
        modules += ["flwr", "sklearn"]
    problem = require_modules(command, *modules)
    if problem is not None:
        typer.secho(f"error: {problem}", err=True, fg="red")
        raise typer.Exit(2)
