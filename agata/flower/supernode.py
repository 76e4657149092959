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

import functools
import importlib.metadata
import json
import logging
import os
import re
import socket
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agata.errors import AgataError, ErrorCode, invalid
from agata.flower.flwr_cli import flower_bin, flower_environment

__all__ = [
    "SuperNodeLaunch",
    "check_flower",
    "free_port",
    "node_config",
    "prepare_supernode",
    "supernode_arguments",
]

logger = logging.getLogger(__name__)

Register = Callable[[str], Awaitable[Any]]
"""Sends the node's public key to the cloud (``rpc_exec_register_flower_node``) and
returns its reply: ``{"node_auth": bool, "node_id": ..., "flower_version": str}``."""

_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


@functools.cache
def installed_flower() -> str | None:
    """The version of ``flwr`` installed beside the agent, or None (read once: the
    package metadata scan costs milliseconds on every dispatch otherwise)."""
    try:
        return importlib.metadata.version("flwr")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_flower(wanted: str, have: str | None) -> str:
    """``have`` (the flwr installed here, :func:`installed_flower`) if it serves a
    SuperLink of version ``wanted``
    (same major.minor); else NOT_FOUND (none installed) or INVALID_ARGUMENT (another
    version), saying which."""
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
    tls: bool,
    root_certificates: Path | None = None,
    private_key: Path | None = None,
) -> list[str]:
    """The arguments of ``flower-supernode`` for one run (``tls`` False: ``--insecure``;
    ``root_certificates`` None with TLS: the system's CAs)."""
    arguments = ["--superlink", superlink, "--node-config", config, "--port", str(port)]
    if not tls:
        arguments.append("--insecure")
    elif root_certificates is not None:
        arguments += ["--root-certificates", str(root_certificates)]
    if private_key is not None:
        arguments += ["--auth-supernode-private-key", str(private_key)]
    return arguments


@dataclass(frozen=True)
class SuperNodeLaunch:
    """What the agent runs: ``python <program> <arguments>`` with ``env`` added."""

    program: str
    arguments: list[str]
    env: Mapping[str, str]


async def prepare_supernode(
    work: Path,
    client_arguments: Sequence[str],
    *,
    device_id: str,
    superlink: str,
    ca_file: Path | None,
    register: Register,
    owner: tuple[int, int] | None = None,
    offered: Mapping[str, Any] | None = None,
) -> SuperNodeLaunch:
    """Everything before a device's SuperNode starts for a run (the module docstring).

    Raises AgataError with the reason (the agent then fails the task on this device):
    flwr missing or of another version, a bad client argument, a refused registration.
    ``owner``: (uid, gid) of the task user the SuperNode runs as, if one.
    ``offered``: the offer's ``flower`` part (``node_auth``, ``version``); when it says
    there is no node authentication, no key is made or sent (a faster dispatch).
    """
    have = check_flower("", installed_flower())  # missing: say so before anything is made
    program = flower_bin("flower-supernode")
    if not Path(program).is_absolute():
        raise AgataError(
            ErrorCode.NOT_FOUND,
            "flower-supernode is not installed beside the agent (pip install 'agata[flower]')",
        )
    config = node_config(client_arguments, device_id)
    private_key: Path | None = None
    if offered is not None and not offered.get("node_auth"):
        # The offer says the run has no node authentication: no key to register.
        check_flower(str(offered.get("version") or ""), have)
        node_auth = False
    else:
        from agata.flower.node_keys import make_node_key

        private_key, public_key = make_node_key(work)
        reply = await register(public_key)
        if not isinstance(reply, dict):
            raise AgataError(ErrorCode.INTERNAL, f"the cloud's reply to the key was {reply!r}")
        check_flower(str(reply.get("flower_version") or ""), have)
        node_auth = bool(reply.get("node_auth"))
        if not node_auth:
            private_key.unlink(missing_ok=True)
        elif owner is not None:  # the SuperNode runs as the task user: the key is its
            os.chown(private_key, *owner)
    arguments = supernode_arguments(
        superlink,
        config,
        port=free_port(),
        tls=node_auth,
        root_certificates=ca_file,
        private_key=private_key if node_auth else None,
    )
    env = {**flower_environment(work / "flwr-home"), "HOME": str(work)}
    return SuperNodeLaunch(program, arguments, env)
