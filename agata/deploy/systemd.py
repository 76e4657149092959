"""systemd unit files for ``agata cloud run`` and ``agata edge run``.

:func:`render_unit` returns the text of one unit. Its contract:

- The service runs as a dedicated, unprivileged user (``User=``/``Group=``, default
  ``agata``; create it with :func:`user_commands`), never as root.
- Its state lives in ``/var/lib/<state_dir>`` (``StateDirectory=``: systemd creates it,
  owned by that user) and is passed as ``AGATA_DATA_DIR``; settings come from an optional
  environment file ``/etc/agata/<role>.env`` (``AGATA_*`` variables, see
  agata/settings/) and, when given, a config file (``--config``).
- ``Restart=on-failure``: a crash is restarted after ``RestartSec``; a clean stop is not.
- ``LimitNOFILE=``: the cloud's gateway holds one connection per agent (push); the
  default leaves room for ``max_connections`` (10,000) plus files.
- ``KillMode=mixed``: on stop only the agata process gets SIGTERM and stops its task
  processes in order (they lead process groups of their own); whatever is left after
  ``TimeoutStopSec`` is killed.
- Every value is checked: a value that would break the unit (a newline, a relative
  ExecStart path) is refused with AgataError(INVALID_ARGUMENT).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agata.errors import AgataError, ErrorCode

__all__ = ["Role", "UnitOptions", "render_unit", "user_commands"]

Role = Literal["cloud", "edge"]

DESCRIPTIONS: dict[str, str] = {
    "cloud": "AGATA cloud (gateway, task manager, device registry)",
    "edge": "AGATA edge agent (runs federated-learning tasks on this device)",
}
DEFAULT_NOFILE: dict[str, int] = {"cloud": 65536, "edge": 4096}


@dataclass(frozen=True)
class UnitOptions:
    """What a unit is made of; ``agata`` MUST be the absolute path of the executable."""

    role: Role
    agata: Path
    user: str = "agata"
    group: str | None = None  # default: the user's name
    config: Path | None = None
    limit_nofile: int | None = None  # default: DEFAULT_NOFILE[role]
    extra_args: list[str] = field(default_factory=list)
    supplementary_groups: list[str] = field(default_factory=list)  # e.g. gpio on a Pi
    stop_timeout: int = 30

    @property
    def state_dir(self) -> str:
        return f"agata-{self.role}"


def _check(name: str, value: str) -> str:
    if not value or any(c in value for c in "\n\r\0'\"\\"):
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"{name}: {value!r} cannot go in a unit")
    return value


def _exec_line(argv: list[str]) -> str:
    # systemd splits ExecStart like a shell, without expansion; quote what needs it and
    # double "%" and "$" (systemd's specifiers and variables).
    return " ".join(shlex.quote(a).replace("%", "%%").replace("$", "$$") for a in argv)


def render_unit(options: UnitOptions) -> str:
    """The unit file text of ``options`` (see the module docstring)."""
    if options.role not in DESCRIPTIONS:
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT, f"role must be cloud or edge, not {options.role!r}"
        )
    if not options.agata.is_absolute():
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT,
            f"the agata executable must be an absolute path: {options.agata}",
        )
    user = _check("user", options.user)
    group = _check("group", options.group or options.user)
    nofile = options.limit_nofile or DEFAULT_NOFILE[options.role]
    if nofile < 64:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"LimitNOFILE {nofile} is too small")
    argv = [str(options.agata), options.role, "run"]
    if options.config is not None:
        argv += ["--config", str(options.config)]
    argv += options.extra_args
    for arg in argv:
        _check("argument", arg)
    lines = [
        "# Made by `agata deploy systemd " + options.role + "`; see docs/deployment.md.",
        "[Unit]",
        f"Description={DESCRIPTIONS[options.role]}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        f"Group={group}",
    ]
    if options.supplementary_groups:
        groups = " ".join(_check("group", g) for g in options.supplementary_groups)
        lines.append(f"SupplementaryGroups={groups}")
    lines += [
        f"StateDirectory={options.state_dir}",
        f"WorkingDirectory=/var/lib/{options.state_dir}",
        f"Environment=AGATA_DATA_DIR=/var/lib/{options.state_dir}",
        "Environment=FLWR_TELEMETRY_ENABLED=0",
        "Environment=PYTHONUNBUFFERED=1",
        f"EnvironmentFile=-/etc/agata/{options.role}.env",
        f"ExecStart={_exec_line(argv)}",
        "Restart=on-failure",
        "RestartSec=5",
        f"LimitNOFILE={nofile}",
        "KillMode=mixed",
        f"TimeoutStopSec={options.stop_timeout}",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=full",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def user_commands(options: UnitOptions) -> list[str]:
    """Shell commands that create the dedicated user (run once, as root)."""
    user = shlex.quote(_check("user", options.user))
    commands = [
        f"id -u {user} >/dev/null 2>&1 || useradd --system --user-group "
        f"--home-dir /var/lib/{options.state_dir} --shell /usr/sbin/nologin {user}",
        "install -d -m 0755 /etc/agata",
    ]
    for group in options.supplementary_groups:
        commands.append(f"usermod -aG {shlex.quote(group)} {user}")
    return commands
