"""``agata cloud run`` and ``agata token ...``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer

from agata.cli.options import TaskDirOption, TaskUserOption
from agata.settings import Settings, load_settings

cloud_app = typer.Typer(help="Run the cloud side (task manager, device registry, gateway).")
token_app = typer.Typer(help="Operator tokens.")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="agata.toml or the original config.ini")
]
DataDirOption = Annotated[Path | None, typer.Option("--data-dir", help="databases and bundles")]


def cloud_settings(config: Path | None, **flags: object) -> Settings:
    return load_settings(config, flags)


@cloud_app.command("run")
def run_cloud(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    bus: Annotated[str | None, typer.Option("--bus", help="memory:// or amqp://...")] = None,
    db: Annotated[
        str | None, typer.Option("--db", help="sqlite:///... or postgresql://...")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="gateway address")] = None,
    port: Annotated[int | None, typer.Option("--port", help="gateway port (0: any free)")] = None,
    service: Annotated[
        list[str] | None,
        typer.Option("--service", help="run only this service (repeatable; needs amqp://)"),
    ] = None,
    legacy_devices: Annotated[
        bool | None,
        typer.Option("--legacy-devices", help="let devices of the original system in"),
    ] = None,
    ssl_certfile: Annotated[
        Path | None,
        typer.Option("--ssl-certfile", help="PEM certificate (chain): serve HTTPS"),
    ] = None,
    ssl_keyfile: Annotated[
        Path | None,
        typer.Option("--ssl-keyfile", help="unencrypted PEM private key of --ssl-certfile"),
    ] = None,
    rate_limit: Annotated[
        float | None,
        typer.Option("--rate-limit", help="requests/s per client address (0: no limit)"),
    ] = None,
    rate_burst: Annotated[
        float | None,
        typer.Option("--rate-burst", help="requests at once per address (0: 2x rate, >= 10)"),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            "--max-connections",
            help="connections held at once, 503 beyond (each agent keeps one open)",
        ),
    ] = None,
    body_timeout: Annotated[
        float | None,
        typer.Option("--body-timeout", help="seconds a request body may take (408 beyond)"),
    ] = None,
    body_min_rate: Annotated[
        float | None,
        typer.Option("--body-min-rate", help="bytes/s a body must average after 10 s"),
    ] = None,
    max_slow_bodies: Annotated[
        int | None,
        typer.Option("--max-slow-bodies", help="slow bodies per client address (429 beyond)"),
    ] = None,
    max_downloads: Annotated[
        int | None,
        typer.Option("--max-downloads", help="downloads at once per device (429 beyond)"),
    ] = None,
    wheelhouse: Annotated[
        Path | None,
        typer.Option(
            "--wheelhouse", help="a folder of wheels served to devices (offline installs)"
        ),
    ] = None,
    task_user: TaskUserOption = None,
    task_dir: TaskDirOption = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            "--max-in-flight",
            help="requests served at once; as many wait, the rest get 503 + Retry-After",
        ),
    ] = None,
    admission_wait: Annotated[
        float | None,
        typer.Option("--admission-wait", help="seconds a request may wait for a place before 503"),
    ] = None,
    max_running_tasks: Annotated[
        int | None,
        typer.Option(
            "--max-running-tasks", help="runs at once; a start past it is queued (default: no cap)"
        ),
    ] = None,
    artifact_max_mb: Annotated[
        int | None,
        typer.Option("--artifact-max-mb", help="largest artifact a run may save, MB (256)"),
    ] = None,
) -> None:
    """Start the cloud services and the HTTP gateway in this process."""
    from agata.cli.main import setup_logging
    from agata.cloud.cloud_node import SERVICES, CloudNode

    settings = cloud_settings(
        config,
        data_dir=data_dir,
        task_user=task_user,
        task_dir=task_dir,
        bus_url=bus,
        db_url=db,
        gateway_host=host,
        gateway_port=port,
        legacy_devices=legacy_devices,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        rate_limit=rate_limit,
        rate_burst=rate_burst,
        max_connections=max_connections,
        body_timeout=body_timeout,
        body_min_rate=body_min_rate,
        max_slow_bodies=max_slow_bodies,
        max_downloads=max_downloads,
        max_in_flight=max_in_flight,
        admission_wait=admission_wait,
        wheelhouse=wheelhouse,
        max_running_tasks=max_running_tasks,
        artifact_max_mb=artifact_max_mb,
    )
    setup_logging(settings.log_level)
    services = tuple(service or SERVICES)
    if len(services) < len(SERVICES) and settings.bus_url.startswith("memory"):
        raise typer.BadParameter("running services separately needs --bus amqp://...")

    async def main() -> None:
        node = CloudNode(settings, services=services)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await node.start(first_token="gateway" in services)
        token = node.first_token
        if node.port is not None:
            typer.echo(f"AGATA cloud on {node.url}  (web console: {node.url}/ui/)")
        if token:
            typer.echo(f"first operator token (also in {node.data_dir / 'operator-token'}):")
            typer.echo(f"  {token}")
        waiter = asyncio.create_task(node.wait())
        await asyncio.wait(
            [waiter, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED"
        )
        await node.stop()
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await waiter

    asyncio.run(main())


@token_app.command("create")
def create_token(
    name: Annotated[str, typer.Option("--name", help="who or what the token is for")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    db: Annotated[str | None, typer.Option("--db")] = None,
) -> None:
    """Create an operator token (printed once; only its hash is stored)."""
    from agata.cloud.credentials.tokens import OPERATOR_PREFIX, hash_token, new_token
    from agata.store.store_factory import create_store

    settings = cloud_settings(config, data_dir=data_dir, db_url=db)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    token = new_token(OPERATOR_PREFIX)
    with create_store(settings.database_url) as store:
        store.add_operator_token(name, hash_token(token))
    typer.echo(token)


@token_app.command("list")
def list_tokens(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    db: Annotated[str | None, typer.Option("--db")] = None,
) -> None:
    """List operator tokens (names and ids, never the tokens)."""
    from agata.store.store_factory import create_store

    settings = cloud_settings(config, data_dir=data_dir, db_url=db)
    with create_store(settings.database_url) as store:
        for t in store.list_operator_tokens():
            typer.echo(f"{t.token_id}  {t.name}  {t.created_at}{'  revoked' if t.revoked else ''}")


@token_app.command("revoke")
def revoke_token(
    token_id: str,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    db: Annotated[str | None, typer.Option("--db")] = None,
) -> None:
    """Revoke an operator token by id."""
    from agata.store.store_factory import create_store

    settings = cloud_settings(config, data_dir=data_dir, db_url=db)
    with create_store(settings.database_url) as store:
        store.revoke_operator_token(token_id)
