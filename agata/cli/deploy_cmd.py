"""``agata deploy systemd cloud|edge``: a systemd unit for this installation."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

deploy_app = typer.Typer(help="Install AGATA as a service of this machine.")


def _this_agata() -> Path:
    """The ``agata`` executable of the running installation (its venv's bin)."""
    beside = Path(sys.executable).parent / "agata"
    if beside.is_file():
        return beside.absolute()
    found = shutil.which("agata")
    return Path(found).absolute() if found else beside.absolute()


@deploy_app.command("systemd")
def systemd(
    role: Annotated[str, typer.Argument(help="cloud or edge", metavar="cloud|edge")],
    user: Annotated[str, typer.Option(help="the dedicated user the service runs as")] = "agata",
    config: Annotated[
        Path | None, typer.Option("--config", help="agata.toml the service reads")
    ] = None,
    agata: Annotated[
        Path | None, typer.Option("--agata", help="the agata executable [default: this one]")
    ] = None,
    limit_nofile: Annotated[
        int | None,
        typer.Option("--limit-nofile", min=64, help="open files [default: cloud 65536, edge 4096]"),
    ] = None,
    gpio: Annotated[
        bool, typer.Option("--gpio", help="edge: add the user to the gpio group (hooks)")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write the unit here (else stdout)")
    ] = None,
) -> None:
    """Print a systemd unit for `agata cloud run` or `agata edge run`, and how to install it."""
    from agata.deploy.systemd import UnitOptions, render_unit, user_commands

    if role not in ("cloud", "edge"):
        raise typer.BadParameter(f"choose cloud or edge, not {role!r}")
    options = UnitOptions(
        role=role,  # type: ignore[arg-type]
        agata=(agata or _this_agata()).absolute(),
        user=user,
        config=config.absolute() if config else None,
        limit_nofile=limit_nofile,
        supplementary_groups=["gpio"] if gpio else [],
    )
    text = render_unit(options)
    name = f"agata-{role}.service"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
    target = output or Path(name)
    steps = [
        *user_commands(options),
        f"install -m 0644 {target} /etc/systemd/system/{name}",
        f"systemctl daemon-reload && systemctl enable --now {name}",
        f"journalctl -u {name} -f",
    ]
    typer.echo(f"# install (as root): settings go in /etc/agata/{role}.env", err=True)
    for step in steps:
        typer.echo(f"#   {step}", err=True)
