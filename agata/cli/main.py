"""``agata`` -- the command-line entry point: it only puts the commands together.

How the CLI is built (and how to add to it):

- Each command group is one module ``agata/cli/<group>_cmd.py`` that defines a
  ``typer.Typer`` (``cloud_app``, ``edge_app``, ``bench_app``, …) or plain command
  functions; :data:`GROUPS` and :data:`COMMANDS` below name them once. Adding a group
  (e.g. ``agata task …``) is a new ``task_cmd.py`` plus one row in :data:`GROUPS`.
- Imports run one way: this module imports the ``*_cmd`` modules; they import only the
  leaf helpers beside them (:mod:`~agata.cli.logs` for ``setup_logging``,
  :mod:`~agata.cli.runner` for the event loop and SIGINT/SIGTERM,
  :mod:`~agata.cli.options` for shared flags, :mod:`~agata.cli.extras` for missing
  extras) and never this module, so there is no import cycle.
- Every benchmark is an ``agata bench …`` command of :mod:`~agata.cli.bench_cmd`.
- Commands import the heavy parts (the cloud, Flower, the benchmarks) inside their
  body, so ``agata --help`` and a device's ``agata edge run`` stay light.
- An :class:`~agata.errors.AgataError` or a missing extra ends a command with one line
  on stderr and exit code 2, never a traceback (:func:`main`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from agata import __version__
from agata.cli.bench_cmd import bench_app
from agata.cli.cloud_cmd import cloud_app, token_app
from agata.cli.demo_cmd import demo, experiment
from agata.cli.deploy_cmd import deploy_app
from agata.cli.device_cmd import register as register_device_ops
from agata.cli.edge_cmd import device_app, edge_app
from agata.cli.extras import install_hint, missing_extra
from agata.cli.run_cmd import run_app
from agata.cli.simulate_cmd import simulate
from agata.cli.task_cmd import task_app
from agata.errors import AgataError

__all__ = ["COMMANDS", "GROUPS", "app", "main"]


def version() -> None:
    """Print the version."""
    typer.echo(__version__)


# ``agata device``: enrollment (run on a device, edge_cmd) and the operator's device
# commands (device_cmd) share one group.
register_device_ops(device_app)

#: ``agata <group> …``: the command groups, by name.
GROUPS: dict[str, typer.Typer] = {
    "cloud": cloud_app,
    "token": token_app,
    "edge": edge_app,
    "device": device_app,
    "task": task_app,
    "run": run_app,
    "deploy": deploy_app,
    "bench": bench_app,
}
#: ``agata <command>``: the commands without a group.
COMMANDS: dict[str, Callable[..., Any]] = {
    "version": version,
    "demo": demo,
    "experiment": experiment,
    "simulate": simulate,
}

app = typer.Typer(
    name="agata",
    help="AGATA: a control plane for federated learning on fleets of devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for _name, _group in GROUPS.items():
    app.add_typer(_group, name=_name)
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)


def main() -> None:
    """Run the CLI; an AgataError or a missing extra is one line and exit code 2."""
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
