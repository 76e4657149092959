"""The SuperNode a device runs for a flower-app run: checks, node config, command.

The agent starts ``flower-supernode`` supervised like a client script (its output is
the task's log, its failure fails over); it is never told a run ended: a SuperNode
serves runs until it is ended, so the agent stops it when the cloud no longer offers
the task (the run ended), which is a stop and not a failure.

- :func:`check_flower`: ``flwr`` must be installed beside the agent and of the cloud's
  ``major.minor`` version; else the reason says which (the task then fails on this
  device like a client side that cannot start, and the next task is tried).
- :func:`node_config`: the task's client arguments (``key=value`` items, placeholders
  already expanded from the device's attributes, e.g. ``partition-id={partition_id}``)
  plus ``device-id``; each value a TOML value as Flower expects.
- :func:`supernode_arguments`: the run's SuperLink, TLS with the CA the agent trusts
  for the cloud (or ``--insecure`` when the cloud has no certificate), the node key, and
  a free local port for the SuperNode's own API (several SuperNodes share a host).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import socket
import tomllib
from collections.abc import Sequence
from pathlib import Path

from agata.errors import AgataError, ErrorCode, invalid

__all__ = ["check_flower", "free_port", "node_config", "supernode_arguments"]

_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def installed_flower() -> str | None:
    """The version of ``flwr`` installed beside the agent, or None."""
    try:
        return importlib.metadata.version("flwr")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_flower(wanted: str, installed: str | None = None) -> str:
    """The installed flwr version if it serves a SuperLink of version ``wanted``
    (same major.minor); else FAILED_PRECONDITION-like INVALID_ARGUMENT saying which."""
    have = installed if installed is not None else installed_flower()
    if have is None:
        raise AgataError(
            ErrorCode.NOT_FOUND,
            f"flwr is not installed on this device (the run's SuperLink is flwr {wanted or '?'}); "
            "install it beside the agent: pip install 'agata[flower]'",
        )
    if wanted and have.split(".")[:2] != wanted.split(".")[:2]:
        raise invalid(
            f"flwr {have} is installed on this device, but the run's SuperLink is flwr "
            f"{wanted}: install flwr=={wanted} beside the agent"
        )
    return have


def node_config(arguments: Sequence[str], device_id: str) -> str:
    """The ``--node-config`` text from expanded client arguments and the device id.

    A value that is not a TOML value (``partition-id=0`` is, ``name=abc`` is not) is
    quoted as a string; a malformed item is INVALID_ARGUMENT naming it.
    """
    items: dict[str, str] = {}
    for item in arguments:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise invalid(
                f"client argument {item!r} of a flower-app task must be key=value "
                "(an entry of the SuperNode's node config)"
            )
        items[key] = _toml_value(value.strip())
    items.setdefault("device-id", json.dumps(device_id))
    return " ".join(f"{key}={value}" for key, value in items.items())


def _toml_value(text: str) -> str:
    try:
        tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return json.dumps(text)
    return text


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (for the SuperNode's local API)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def supernode_arguments(
    superlink: str,
    config: str,
    *,
    port: int,
    root_certificates: Path | None,
    private_key: Path | None,
) -> list[str]:
    """The arguments of ``flower-supernode`` for one run."""
    arguments = ["--superlink", superlink, "--node-config", config, "--port", str(port)]
    if root_certificates is None:
        arguments.append("--insecure")
    else:
        arguments += ["--root-certificates", str(root_certificates)]
    if private_key is not None:
        arguments += ["--auth-supernode-private-key", str(private_key)]
    return arguments
