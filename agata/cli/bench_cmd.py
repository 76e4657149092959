"""``agata bench …``: every benchmark command, in one place.

Each command measures one part of AGATA on this machine and prints its figures beside a
bare limit measured in the same run and the ratio (docs/benchmarks.md). ``agata bench``
alone (or ``agata bench all``) runs them all. The measuring code lives in
:mod:`agata.bench`; here are only the options and the printing. A new benchmark is one
more ``@bench_app.command`` below.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from agata.cli.logs import setup_logging
from agata.cli.runner import run_fast

if TYPE_CHECKING:
    from agata.bench.report import BenchReport

bench_app = typer.Typer(help="Measure AGATA on this machine and compare with the targets.")


@bench_app.command("bus")
def bench_bus(
    amqp_url: Annotated[
        str | None, typer.Option(help="also measure this RabbitMQ (amqp://...)")
    ] = None,
    calls: Annotated[int, typer.Option(min=100)] = 20_000,
    in_flight: Annotated[int, typer.Option(min=1)] = 16,
    json_out: Annotated[Path | None, typer.Option("--json", help="write figures here")] = None,
) -> None:
    """Round-trip latency (p50/p99) and RPC/s of memory:// and amqp://."""
    from agata.bench.bus_bench import run_bus_bench
    from agata.bench.report import render

    setup_logging("WARNING")
    report = run_bus_bench(amqp_url, calls, in_flight)
    render([report])
    if json_out:
        report.save(json_out)


@bench_app.command("containment")
def bench_containment(
    rounds: Annotated[int, typer.Option(min=3)] = 30,
    json_out: Annotated[Path | None, typer.Option("--json", help="write figures here")] = None,
) -> None:
    """What containment (cgroup or marker, task user, limits) adds to a task's spawn."""
    from agata.bench.containment_bench import run_containment_bench
    from agata.bench.report import render

    setup_logging("WARNING")
    report = run_containment_bench(rounds)
    render([report])
    if json_out:
        report.save(json_out)


@bench_app.command("flower")
def bench_flower(
    rounds: Annotated[int, typer.Option(min=1, help="rounds of the example app")] = 3,
    runs: Annotated[
        int, typer.Option(min=0, help="runs of each, alternating (0: dispatch only)")
    ] = 1,
    samples: Annotated[int, typer.Option(min=1, help="dispatch samples of each kind")] = 5,
    json_out: Annotated[Path | None, typer.Option("--json", help="write figures here")] = None,
) -> None:
    """A Flower App run managed by AGATA against the same run by hand, and dispatch."""
    from agata.bench.flower_bench import run_flower_bench
    from agata.bench.report import render

    setup_logging("WARNING")
    report = run_flower_bench(rounds, runs, samples)
    render([report])
    if json_out:
        report.save(json_out)


@bench_app.command("environments")
def bench_environments(
    rounds: Annotated[int, typer.Option(min=3)] = 20,
    wheelhouse: Annotated[
        Path | None, typer.Option(help="build from this wheel folder (default: one made here)")
    ] = None,
    requirements: Annotated[
        str, typer.Option(help="with --wheelhouse: what to install, e.g. 'flwr numpy'")
    ] = "",
    json_out: Annotated[Path | None, typer.Option("--json", help="write figures here")] = None,
) -> None:
    """First build of a task environment, and what one adds to a later dispatch."""
    from agata.bench.environments_bench import run_environments_bench
    from agata.bench.report import render

    setup_logging("WARNING")
    wanted = "\n".join(requirements.split()) + "\n" if requirements else ""
    report = run_environments_bench(rounds, wheelhouse, wanted)
    render([report])
    if json_out:
        report.save(json_out)


@bench_app.callback(invoke_without_command=True)
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

    setup_logging("ERROR")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = json_out or Path(f"agata-bench-{stamp}.json")
    run_all(devices=devices, amqp_url=amqp_url, json_out=path, quick=quick)
    typer.echo(f"figures written to {path}")


@bench_app.command("cloud")
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

    setup_logging("ERROR")
    reports = run_cloud_bench(amqp_url, samples)
    render(reports)
    if json_out:
        _save(reports, json_out)


@bench_app.command("devices")
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

    setup_logging("ERROR")
    report = run_devices_bench(devices, tasks, seconds, connections, amqp_url)
    render([report])
    if json_out:
        _save([report], json_out)


@bench_app.command("console")
def bench_console(
    devices: Annotated[int, typer.Option(min=1, help="devices in the store")] = 10_000,
    samples: Annotated[int, typer.Option(min=5, help="calls per figure")] = 50,
    enrolling: Annotated[
        int, typer.Option(min=0, help="devices enrolling during the first load (0: skip)")
    ] = 1000,
    db: Annotated[
        str, typer.Option("--db", help="an empty postgresql://... (default: SQLite)")
    ] = "",
    json_out: Annotated[Path | None, typer.Option("--json", help="write figures here")] = None,
) -> None:
    """The console's queries at fleet size: pages of devices beside get_user_info."""
    from agata.bench.console_bench import run_console_bench
    from agata.bench.report import render

    setup_logging("ERROR")
    report = run_console_bench(devices, samples, enrolling, db)
    render([report])
    if json_out:
        _save([report], json_out)


@bench_app.command("runs")
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

    setup_logging("ERROR")
    report = run_runs_bench(runs, metrics, samples, db)
    render([report])
    if json_out:
        _save([report], json_out)


@bench_app.command("edge")
def bench_edge(
    samples: Annotated[int, typer.Option(min=2, help="dispatches and failovers")] = 10,
    idle_seconds: Annotated[float, typer.Option(min=1)] = 10.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write figures here")] = None,
) -> None:
    """A real agent process: dispatch latency, failover, idle CPU and RSS; step 6."""
    from agata.bench.edge_bench import run_edge_bench
    from agata.bench.report import render

    setup_logging("ERROR")
    report = run_edge_bench(samples, idle_seconds)
    render([report])
    if json_out:
        _save([report], json_out)


def _save(reports: list[BenchReport], path: Path) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_json() for r in reports], indent=2))


@bench_app.command("load")
def bench_load(
    steps: Annotated[
        str, typer.Option(help="fleet sizes to try, in order (stops at the first failure)")
    ] = "500,1000,2000,3000,4000,6000,8000",
    seconds: Annotated[
        float, typer.Option(min=5, help="steady window measured at each step")
    ] = 20.0,
    poll_interval: Annotated[float, typer.Option("--poll-interval", min=0.1)] = 10.0,
    p99_ms: Annotated[float, typer.Option("--p99-ms", help="latency bound")] = 100.0,
    tasks: Annotated[int, typer.Option(min=1, max=50)] = 4,
    bus: Annotated[str, typer.Option("--bus", help="memory:// or amqp://...")] = "memory://",
    db: Annotated[
        str | None,
        typer.Option("--db", help="postgresql://... (default: SQLite in a temporary folder)"),
    ] = None,
    setup_rate: Annotated[
        float, typer.Option("--setup-rate", min=1, help="new devices per second in a ramp")
    ] = 10.0,
    split: Annotated[
        bool, typer.Option("--split", help="amqp://: one cloud process per service")
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="write figures here")] = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="steps: largest fleet; onboard: --devices arriving at --rate/s; "
            "restart: --devices on board, then the cloud restarted",
        ),
    ] = "steps",
    devices: Annotated[int, typer.Option("--devices", min=1, help="onboard/restart")] = 2000,
    rate: Annotated[
        float, typer.Option("--rate", min=0.1, help="onboard: new devices per second")
    ] = 20.0,
    max_in_flight: Annotated[
        int | None, typer.Option("--max-in-flight", help="the cloud's (default: its own)")
    ] = None,
    admission_wait: Annotated[
        float | None, typer.Option("--admission-wait", help="the cloud's (default: its own)")
    ] = None,
) -> None:
    """The largest fleet the cloud serves at the poll interval with p99 under the bound
    (``--mode steps``), or how it takes a burst of devices (``onboard``, ``restart``)."""
    from agata.bench.load_bench import run_load_bench
    from agata.bench.report import render

    setup_logging("ERROR")
    if mode in ("onboard", "restart"):
        from agata.bench.burst_bench import run_onboard_bench, run_restart_bench

        common: dict[str, object] = {
            "tasks": tasks,
            "poll_interval": poll_interval,
            "bus_url": bus,
            "db_url": db,
            "max_in_flight": max_in_flight,
            "admission_wait": admission_wait,
            "progress": typer.echo,
        }
        if mode == "onboard":
            burst = run_fast(run_onboard_bench(devices, rate, **common))  # type: ignore[arg-type]
        else:
            burst = run_fast(
                run_restart_bench(devices, setup_rate=setup_rate, **common)  # type: ignore[arg-type]
            )
        render([burst])
        if json_out:
            burst.save(json_out)
        return
    if mode != "steps":
        raise typer.BadParameter(f"--mode: steps, onboard or restart, not {mode!r}")
    try:
        sizes = [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"--steps: comma-separated device counts, not {steps!r}")
    if split and not bus.startswith("amqp"):
        raise typer.BadParameter("--split needs an amqp:// --bus")
    report = run_fast(
        run_load_bench(
            sizes,
            seconds=seconds,
            poll_interval=poll_interval,
            p99_limit_ms=p99_ms,
            tasks=tasks,
            bus_url=bus,
            db_url=db,
            setup_rate=setup_rate,
            split=split,
            progress=typer.echo,
        )
    )
    render([report])
    if json_out:
        report.save(json_out)


bench_app.command("all")(bench_all)


@bench_app.command("scaling")
def bench_scaling(
    bus: Annotated[str, typer.Option("--bus", help="amqp://... (RabbitMQ on this machine)")],
    db: Annotated[
        str, typer.Option("--db", help="postgresql://... on this machine (a database is made)")
    ],
    rabbitmqctl: Annotated[
        str,
        typer.Option(
            "--rabbitmqctl",
            help="command line of rabbitmqctl for that broker, e.g. 'rabbitmqctl -n NODE' "
            "or 'bash scripts/services.sh rabbitmqctl'",
        ),
    ],
    devices: Annotated[int, typer.Option(min=10, help="fleet of the unit run")] = 100,
    check_devices: Annotated[
        int, typer.Option("--check-devices", min=10, help="fleet of the 2x2 check run")
    ] = 200,
    seconds: Annotated[float, typer.Option(min=5, help="each measured window")] = 20.0,
    report_rate: Annotated[
        float, typer.Option("--report-rate", min=1, help="reports/s in the unit run")
    ] = 10.0,
    streams: Annotated[int, typer.Option(min=1, help="event streams held open")] = 100,
    setup_rate: Annotated[
        float,
        typer.Option("--setup-rate", min=0.5, help="new devices/s while a fleet comes on board"),
    ] = 5.0,
    tolerance: Annotated[float, typer.Option(min=0.01, help="model vs measured")] = 0.25,
    fleet_size: Annotated[int, typer.Option("--fleet-size", min=1)] = 100_000,
    report_interval: Annotated[
        float, typer.Option("--report-interval", min=1, help="s between a device's reports")
    ] = 60.0,
    utilisation: Annotated[
        float, typer.Option(min=0.05, max=1.0, help="of a core, per replica, at most")
    ] = 0.5,
    json_out: Annotated[Path | None, typer.Option("--json", help="write figures here")] = None,
) -> None:
    """Per-component costs of a poll and a report, a capacity model from them, checked
    against 2 gateways + 2 task managers, and the sizing of --fleet-size devices
    (docs/scaling.md)."""
    from agata.bench.report import render
    from agata.bench.scaling_bench import ScalingOptions, run_scaling_bench

    setup_logging("ERROR")
    if not bus.startswith("amqp") or not db.startswith("postgres"):
        raise typer.BadParameter("--bus amqp://... and --db postgresql://... are both needed")
    if check_devices < 2:
        raise typer.BadParameter("--check-devices: at least one device per gateway")
    options = ScalingOptions(
        bus_url=bus,
        db_url=db,
        rabbitmqctl=rabbitmqctl,
        devices=devices,
        check_devices=check_devices,
        seconds=seconds,
        report_rate=report_rate,
        streams=min(streams, devices),
        setup_rate=setup_rate,
        tolerance=tolerance,
        fleet_size=fleet_size,
        report_interval=report_interval,
        utilisation=utilisation,
    )
    reports = run_fast(run_scaling_bench(options, progress=typer.echo))
    render(reports)
    if json_out:
        _save(reports, json_out)
