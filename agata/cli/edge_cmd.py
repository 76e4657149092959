"""``agata edge run``, ``agata edge gateway`` and ``agata device enroll``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from agata.cli.options import TaskDirOption, TaskUserOption
from agata.errors import AgataError, ErrorCode
from agata.settings import Settings, load_settings

# No pretty exceptions: they print local variables, and those hold credentials.
edge_app = typer.Typer(
    help="Run the device side: the edge agent and the edge gateway.",
    pretty_exceptions_enable=False,
)
device_app = typer.Typer(
    help="Devices: enroll this one (on a device); list, show, clear-quarantine, revoke "
    "(operator, against a cloud).",
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="agata.toml or the original config.ini")
]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="where the agent keeps its state")
]
CloudUrlOption = Annotated[
    str | None, typer.Option("--cloud-url", help="the cloud gateway, e.g. http://host:8000")
]
CaFileOption = Annotated[
    Path | None,
    typer.Option("--ca-file", help="PEM CA certificate(s) to trust for an https:// cloud"),
]


def _settings(config: Path | None, **flags: Any) -> Settings:
    return load_settings(config, flags)


def _setup_logging(level: str) -> None:
    from agata.cli.main import setup_logging  # imported late: main imports this module

    setup_logging(level)


def _run_until_signal(main: Any, stop: Any) -> None:
    """Run ``main()`` with SIGINT/SIGTERM calling ``stop()``."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        await main()

    asyncio.run(runner())


@edge_app.command("run")
def run_edge(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    cloud_url: CloudUrlOption = None,
    ca_file: CaFileOption = None,
    device_file: Annotated[
        Path | None, typer.Option("--device-file", help="device attributes (TOML or JSON)")
    ] = None,
    user_id: Annotated[str | None, typer.Option("--user-id", help="this device's id")] = None,
    data_qnt: Annotated[float | None, typer.Option("--data-qnt")] = None,
    avg_acc_contrib: Annotated[float | None, typer.Option("--avg-acc-contrib")] = None,
    avg_disconnection_per_round: Annotated[
        float | None, typer.Option("--avg-disconnection-per-round")
    ] = None,
    sensor: Annotated[
        list[str] | None, typer.Option("--sensor", help="a sensor of the device (repeatable)")
    ] = None,
    attribute: Annotated[
        list[str] | None,
        typer.Option("--attribute", help="an extra attribute KEY=VALUE (repeatable)"),
    ] = None,
    policy: Annotated[
        str | None, typer.Option("--policy", help="one: a task at a time; all: up to --max-tasks")
    ] = None,
    max_tasks: Annotated[int | None, typer.Option("--max-tasks")] = None,
    request_interval: Annotated[
        float | None, typer.Option("--request-interval", help="seconds between polls")
    ] = None,
    quarantine_seconds: Annotated[float | None, typer.Option("--quarantine-seconds")] = None,
    download_attempts: Annotated[int | None, typer.Option("--download-attempts")] = None,
    enrollment_token: Annotated[
        str | None,
        typer.Option(
            "--enrollment-token",
            envvar="AGATA_ENROLLMENT_TOKEN",
            help="enroll with this token on first start",
        ),
    ] = None,
    push: Annotated[
        bool, typer.Option("--push/--no-push", help="listen for task changes (else poll only)")
    ] = True,
    hook: Annotated[
        str | None,
        typer.Option(
            "--hook",
            help="program run on each task-state change (AGATA_HOOK_STATE etc. in its "
            "environment; docs/edge.md)",
        ),
    ] = None,
    hook_timeout: Annotated[
        float | None, typer.Option("--hook-timeout", help="seconds before a hook is killed")
    ] = None,
    task_user: TaskUserOption = None,
    task_dir: TaskDirOption = None,
    log_level: Annotated[str | None, typer.Option("--log-level")] = None,
) -> None:
    """Run the edge agent until SIGINT/SIGTERM (which stop its task processes)."""
    from agata.edge.agent import Agent
    from agata.edge.credential import enroll_device, load_credential
    from agata.edge.device_info import DeviceSource

    settings = _settings(
        config,
        data_dir=data_dir,
        cloud_url=cloud_url,
        ca_file=ca_file,
        device_file=device_file,
        policy=policy,
        max_tasks=max_tasks,
        request_interval=request_interval,
        quarantine_seconds=quarantine_seconds,
        download_attempts=download_attempts,
        hook_command=hook,
        hook_timeout=hook_timeout,
        log_level=log_level,
        task_user=task_user,
        task_dir=task_dir,
    )
    _setup_logging(settings.log_level)
    overrides: dict[str, Any] = {
        "user_id": user_id,
        "data_qnt": data_qnt,
        "avg_acc_contrib": avg_acc_contrib,
        "avg_disconnection_per_round": avg_disconnection_per_round,
        "sensors": sensor or None,
        "extra": _attributes(attribute or []) or None,
    }
    if settings.device_file is None and not user_id:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, "give --user-id or --device-file")
    source = DeviceSource(settings.device_file, overrides)
    device = source.current()  # a bad device file stops here, with the reason
    credential = load_credential(settings.data_dir, device.user_id)

    async def main() -> None:
        nonlocal credential
        if credential is None and enrollment_token:
            credential = await enroll_device(
                settings.cloud_url,
                device.user_id,
                enrollment_token,
                settings.data_dir,
                ca_file=settings.ca_file,
            )
            typer.echo(f"device {device.user_id} enrolled")
        if credential is None:
            typer.secho(
                "warning: this device has not enrolled (agata device enroll, or "
                "--enrollment-token); only a cloud run with --legacy-devices accepts it",
                err=True,
                fg="yellow",
            )
        agent = Agent(settings, source, credential=credential, push=push)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.shutdown)
        typer.echo(
            f"edge agent of {device.user_id} -> {settings.cloud_url} "
            f"(policy {settings.policy}, state in {agent.edge_dir})"
        )
        await agent.run()

    asyncio.run(main())


def _attributes(pairs: list[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AgataError(ErrorCode.INVALID_ARGUMENT, f"--attribute {pair!r}: use KEY=VALUE")
        number: Any = value
        with contextlib.suppress(ValueError):
            number = float(value) if "." in value or "e" in value.lower() else int(value)
        extra[key] = {"true": True, "false": False}.get(value.lower(), number)
    return extra


@edge_app.command("gateway")
def run_gateway(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    cloud_url: CloudUrlOption = None,
    ca_file: CaFileOption = None,
    bus: Annotated[
        str | None,
        typer.Option("--bus", help="the device's broker, amqp://user:pass@host:port/vhost"),
    ] = None,
    log_level: Annotated[str | None, typer.Option("--log-level")] = None,
) -> None:
    """Forward the original agent's bus calls on the device's broker to the cloud."""
    from agata.bus import create_bus
    from agata.edge.cloud_client import CloudClient
    from agata.edge.credential import load_credential
    from agata.edge.edge_gateway import EdgeGateway

    settings = _settings(
        config,
        data_dir=data_dir,
        cloud_url=cloud_url,
        ca_file=ca_file,
        edge_bus_url=bus,
        log_level=log_level,
    )
    _setup_logging(settings.log_level)
    if not settings.edge_bus_url:
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT,
            "the edge gateway needs the device's broker: --bus amqp://... "
            "(or [client.broker] in config.ini)",
        )
    credential = load_credential(settings.data_dir)
    stop = asyncio.Event()

    async def main() -> None:
        edge_bus = create_bus(settings.edge_bus_url)
        await edge_bus.connect()
        try:
            async with CloudClient(
                settings.cloud_url, credential=credential, ca_file=settings.ca_file
            ) as client:
                gateway = EdgeGateway(edge_bus, client)
                await gateway.start()
                typer.echo(f"edge gateway: {settings.edge_bus_url} -> {settings.cloud_url}")
                await stop.wait()
                await gateway.stop()
        finally:
            await edge_bus.close()

    _run_until_signal(main, stop.set)


@device_app.command("enroll")
def enroll(
    user_id: Annotated[str, typer.Option("--user-id", help="this device's id")],
    enrollment_token: Annotated[
        str,
        typer.Option(
            "--enrollment-token",
            envvar="AGATA_ENROLLMENT_TOKEN",
            help="issued by the operator (rpc_exec_create_enrollment_token)",
        ),
    ],
    cloud_url: CloudUrlOption = None,
    ca_file: CaFileOption = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Trade an enrollment token for this device's credential (stored with mode 0600)."""
    from agata.edge.credential import credential_path, enroll_device

    settings = _settings(config, data_dir=data_dir, cloud_url=cloud_url, ca_file=ca_file)
    asyncio.run(
        enroll_device(
            settings.cloud_url,
            user_id,
            enrollment_token,
            settings.data_dir,
            ca_file=settings.ca_file,
        )
    )
    typer.echo(f"device {user_id} enrolled; credential in {credential_path(settings.data_dir)}")
