"""``agata`` -- the command-line entry point."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from agata import __version__
from agata.cli.cloud_cmd import cloud_app, token_app
from agata.cli.demo_cmd import register as register_demo
from agata.cli.deploy_cmd import deploy_app
from agata.cli.device_cmd import register as register_device_ops
from agata.cli.edge_cmd import device_app, edge_app
from agata.cli.extras import install_hint, missing_extra
from agata.cli.run_cmd import run_app
from agata.cli.simulate_cmd import register as register_simulate
from agata.cli.task_cmd import task_app
from agata.errors import AgataError

app = typer.Typer(
    name="agata",
    help="AGATA: a control plane for federated learning on fleets of devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Measure AGATA on this machine and compare with the targets.")
app.add_typer(bench_app, name="bench")
app.add_typer(cloud_app, name="cloud")
app.add_typer(token_app, name="token")
app.add_typer(edge_app, name="edge")
app.add_typer(device_app, name="device")
register_device_ops(device_app)
app.add_typer(task_app, name="task")
app.add_typer(run_app, name="run")
app.add_typer(deploy_app, name="deploy")
register_demo(app, bench_app)
register_simulate(app, bench_app)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="agata.toml or the original config.ini"),
]


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level != "DEBUG":
        # A broker outage is handled by agata.bus (one warning, then "reconnected") and
        # aio_pika.robust_connection says why each reconnection attempt failed; these two
        # would add a traceback and one ERROR per channel and per attempt.
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
        logging.getLogger("aio_pika.tools").setLevel(logging.CRITICAL)
        # httpx logs every request at INFO: an agent would write a line per poll (every
        # 10 s, for ever) and one per downloaded file. Failures are logged by agata.edge.
        logging.getLogger("httpx").setLevel(logging.WARNING)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


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


def main() -> None:
    try:
        app()
    except AgataError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise SystemExit(2) from None
    except ModuleNotFoundError as exc:
        extra = missing_extra(exc)
        if extra is None:
            raise
        typer.secho(
            f"error: this command needs the {extra!r} extra ({exc.name} is not installed): "
            f"{install_hint(extra)}",
            err=True,
            fg="red",
        )
        raise SystemExit(2) from None
