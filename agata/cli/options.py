"""Command-line options that several commands share (the same flag, type and help)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

#: ``--config``/``-c``: the settings file of a command that reads settings.
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="agata.toml or the original config.ini")
]
#: ``--task-user``: whom task processes run as (the cloud's server sides, the agent's
#: client sides).
TaskUserOption = Annotated[
    str | None,
    typer.Option(
        "--task-user",
        help="run task processes as this user when running as root (default nobody; "
        "'' : as AGATA's user)",
    ),
]
#: ``--task-dir``: where the task user's bundle copies and work folders go.
TaskDirOption = Annotated[
    Path | None,
    typer.Option("--task-dir", help="task folders for the task user (bundle copies, work)"),
]
