"""``agata demo``, ``agata experiment exp1|exp2`` and ``agata bench [cloud|devices|edge]``.

``register(app, bench_app)`` adds the commands to the main application
(:mod:`agata.cli.main` calls it). ``agata bench`` alone runs every benchmark.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from agata.bench.report import BenchReport

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
) -> None:
    """Experiment 1 on this machine: cloud, task, edge agent, two Flower clients."""
    from agata.cli.main import setup_logging

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

    from agata.cli.main import setup_logging
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


def bench_all(
    ctx: typer.Context,
    devices: Annotated[int, typer.Option(min=1, help="simulated devices")] = 1000,
    amqp_url: Annotated[
        str | None, typer.Option(help="also measure on this RabbitMQ (amqp://...)")
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="write all figures here [default: agata-bench-<time>.json]"),
    ] = None,
    quick: Annotated[bool, typer.Option(help="fewer samples (a smoke run)")] = False,
) -> None:
    """Everything, side by side with the targets: bus, steps, devices, edge."""
    if ctx.invoked_subcommand is not None:
        return
    from agata.bench.all_bench import run_all

    _bench_logging()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = json_out or Path(f"agata-bench-{stamp}.json")
    run_all(devices=devices, amqp_url=amqp_url, json_out=path, quick=quick)
    typer.echo(f"figures written to {path}")


def bench_cloud(
    amqp_url: Annotated[
        str | None, typer.Option(help="also measure on this RabbitMQ (amqp://...)")
    ] = None,
    samples: Annotated[int, typer.Option(min=5)] = 200,
    json_out: Annotated[Path | None, typer.Option("--json", help="write figures here")] = None,
) -> None:
    """Steps 1-5 of experiment 1 through the HTTP gateway: p50/p95 per operation."""
    from agata.bench.cloud_bench import run_cloud_bench
    from agata.bench.report import render

    _bench_logging()
    reports = run_cloud_bench(amqp_url, samples)
    render(reports)
    if json_out:
        _save(reports, json_out)


def bench_devices(
    devices: Annotated[int, typer.Option(min=1, help="simulated devices")] = 1000,
    tasks: Annotated[int, typer.Option(min=1, help="running tasks with criteria")] = 20,
    seconds: Annotated[int, typer.Option(min=1, help="load duration")] = 10,
    connections: Annotated[int, typer.Option(min=1, help="wrk connections (issue 3: 4)")] = 4,
    amqp_url: Annotated[str | None, typer.Option(help="run the cloud on this RabbitMQ")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write figures here")] = None,
) -> None:
    """Task-request throughput: N devices asking for work while tasks run (wrk)."""
    from agata.bench.devices_bench import run_devices_bench
    from agata.bench.report import render

    _bench_logging()
    report = run_devices_bench(devices, tasks, seconds, connections, amqp_url)
    render([report])
    if json_out:
        _save([report], json_out)


def bench_console(
    devices: Annotated[int, typer.Option(min=1, help="devices in the store")] = 10_000,
    samples: Annotated[int, typer.Option(min=5, help="calls per figure")] = 50,
    enrolling: Annotated[
        int, typer.Option(min=0, help="devices enrolling during the first load (0: skip)")
    ] = 1000,
    json_out: Annotated[Path | None, typer.Option("--json", help="write figures here")] = None,
) -> None:
    """The console's queries at fleet size: pages of devices beside get_user_info."""
    from agata.bench.console_bench import run_console_bench
    from agata.bench.report import render

    _bench_logging()
    report = run_console_bench(devices, samples, enrolling)
    render([report])
    if json_out:
        _save([report], json_out)


def bench_runs(
    runs: Annotated[int, typer.Option(min=1, help="runs of the task")] = 1000,
    metrics: Annotated[int, typer.Option(min=1, help="metric rows over its runs")] = 100_000,
    samples: Annotated[int, typer.Option(min=5, help="calls per figure and round")] = 50,
    db: Annotated[str, typer.Option("--db", help="postgresql://... (default: SQLite)")] = "",
    json_out: Annotated[Path | None, typer.Option("--json", help="write figures here")] = None,
) -> None:
    """Runs of a task with a long history: list_runs and get_run beside get_task_by_id."""
    from agata.bench.report import render
    from agata.bench.runs_bench import run_runs_bench

    _bench_logging()
    report = run_runs_bench(runs, metrics, samples, db)
    render([report])
    if json_out:
        _save([report], json_out)


def bench_edge(
    samples: Annotated[int, typer.Option(min=2, help="dispatches and failovers")] = 10,
    idle_seconds: Annotated[float, typer.Option(min=1)] = 10.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write figures here")] = None,
) -> None:
    """A real agent process: dispatch latency, failover, idle CPU and RSS; step 6."""
    from agata.bench.edge_bench import run_edge_bench
    from agata.bench.report import render

    _bench_logging()
    report = run_edge_bench(samples, idle_seconds)
    render([report])
    if json_out:
        _save([report], json_out)


def _bench_logging() -> None:
    from agata.cli.main import setup_logging

    setup_logging("ERROR")


def _save(reports: list[BenchReport], path: Path) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_json() for r in reports], indent=2))


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``demo``, ``experiment`` and the bench subcommands to the CLI."""
    app.command("demo")(demo)
    app.command("experiment")(experiment)
    if bench_app.registered_callback is None:
        # `agata bench` alone runs everything.
        bench_app.callback(invoke_without_command=True)(bench_all)
    bench_app.command("all")(bench_all)
    bench_app.command("cloud")(bench_cloud)
    bench_app.command("devices")(bench_devices)
    bench_app.command("edge")(bench_edge)
    bench_app.command("console")(bench_console)
    bench_app.command("runs")(bench_runs)
