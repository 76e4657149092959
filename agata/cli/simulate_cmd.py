"""``agata simulate``: a simulated fleet against a cloud (``agata bench load`` is in
bench_cmd)."""

from __future__ import annotations

import json
import re
from typing import Annotated

import typer

from agata.cli.logs import setup_logging
from agata.cli.runner import run_fast


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
        result = run_fast(simulate_embedded(options, bus_url=bus, db_url=db))
    else:
        assert cloud_url is not None
        result = run_fast(
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
