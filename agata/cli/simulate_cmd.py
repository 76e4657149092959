"""``agata simulate`` (a simulated fleet), ``agata bench load`` (the largest fleet) and
``agata bench scaling`` (the capacity model).

``register(app, bench_app)`` adds them to the main application (agata/cli/main.py).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (less CPU per request for the simulator)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def simulate(
    devices: Annotated[int, typer.Option("--devices", min=1, max=100_000, help="devices")],
    cloud_url: Annotated[
        str | None, typer.Option("--cloud-url", help="simulate against this gateway")
    ] = None,
    enrollment_token: Annotated[
        str | None,
        typer.Option("--enrollment-token", help="enrolls the devices (uses >= --devices)"),
    ] = None,
    operator_token: Annotated[
        str | None,
        typer.Option(
            "--operator-token",
            help="with --cloud-url: create --tasks tasks and an enrollment token there "
            "(removed afterwards)",
        ),
    ] = None,
    embedded: Annotated[
        bool, typer.Option("--embedded", help="start a cloud in this process")
    ] = False,
    bus: Annotated[
        str, typer.Option("--bus", help="--embedded: memory:// or amqp://...")
    ] = "memory://",
    db: Annotated[
        str | None, typer.Option("--db", help="--embedded: sqlite:///... or postgresql://...")
    ] = None,
    duration: Annotated[float, typer.Option(min=1, help="seconds to run")] = 30.0,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", min=0.05, help="seconds between polls")
    ] = 10.0,
    tasks: Annotated[
        int, typer.Option("--tasks", min=1, max=50, help="tasks to set up (with criteria)")
    ] = 4,
    ramp: Annotated[
        float | None,
        typer.Option(min=0, help="devices start spread over this many seconds (default: one poll)"),
    ] = None,
    warmup: Annotated[
        float | None,
        typer.Option(min=0, help="seconds left out of the steady window (default: ramp + poll/2)"),
    ] = None,
    legacy: Annotated[
        bool,
        typer.Option("--legacy", help="devices of the original kind: no enrollment, no token"),
    ] = False,
    seed: Annotated[int, typer.Option(help="attributes and timings")] = 7,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds per request")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Simulated devices against a cloud: enroll, report, poll, download, play tasks (no FL).

    Prints requests, errors, p50/p95/p99 per operation (docs/simulate.md). Exit 1: a failure.
    """
    from agata.cli.main import setup_logging
    from agata.simulate.simulator import (
        SimulationOptions,
        simulate_against,
        simulate_embedded,
    )

    if embedded == bool(cloud_url):
        raise typer.BadParameter("give either --embedded or --cloud-url")
    if cloud_url and not (enrollment_token or operator_token or legacy):
        raise typer.BadParameter(
            "with --cloud-url give --enrollment-token, --operator-token or --legacy"
        )
    if not embedded and (db or bus != "memory://"):
        raise typer.BadParameter("--bus and --db are for --embedded")
    if cloud_url and not re.fullmatch(r"https?://[^/\s]+/?", cloud_url):
        raise typer.BadParameter(
            f"--cloud-url: the gateway's address, e.g. http://127.0.0.1:8000, not {cloud_url!r}"
        )
    starting = poll_interval if ramp is None else ramp
    if duration <= starting:
        raise typer.BadParameter(
            f"--duration ({duration:g} s) must be longer than the ramp ({starting:g} s: devices "
            "start spread over it; --ramp, or --poll-interval which is its default)"
        )
    setup_logging("WARNING")
    options = SimulationOptions(
        devices=devices,
        duration=duration,
        poll_interval=poll_interval,
        ramp=ramp,
        warmup=warmup,
        tasks=tasks,
        legacy=legacy,
        seed=seed,
        timeout=timeout,
    )
    if embedded:
        result = _run(simulate_embedded(options, bus_url=bus, db_url=db))
    else:
        assert cloud_url is not None
        result = _run(
            simulate_against(
                options,
                cloud_url,
                operator_token=operator_token,
                enrollment_token=enrollment_token,
                target={"mode": "external"},
            )
        )
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        from agata.simulate.summary import render_summary

        render_summary(result)
    raise typer.Exit(0 if result.ok else 1)


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
    from agata.cli.main import setup_logging

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
            burst = _run(run_onboard_bench(devices, rate, **common))  # type: ignore[arg-type]
        else:
            burst = _run(
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
    report = _run(
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
    from agata.cli.main import setup_logging

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
    reports = _run(run_scaling_bench(options, progress=typer.echo))
    render(reports)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps([r.to_json() for r in reports], indent=2))


def register(app: typer.Typer, bench_app: typer.Typer | None = None) -> None:
    """Add ``simulate`` (and ``bench load``, ``bench scaling`` when ``bench_app`` is
    given) to the CLI."""
    app.command("simulate")(simulate)
    if bench_app is not None:
        bench_app.command("load")(bench_load)
        bench_app.command("scaling")(bench_scaling)
