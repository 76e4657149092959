"""Flower's CLI (``flwr``) for one run's SuperLink, with a Flower home of AGATA's own.

Every command runs ``flwr ... --format json`` with ``FLWR_HOME`` pointing at the run's
own folder (its ``config.toml`` names one SuperLink connection, ``run``): the operator's
``~/.flwr`` is never read or written. ``flwr`` exits 0 even when a command failed; the
JSON's ``success`` says, and a failure becomes an :class:`AgataError` carrying Flower's
``error-message``.

The CLI is Flower's stable interface to the Control API (its HTTP messages are Flower's
internals). Each call is a process (~1 s of CPU here: ``import flwr``), so the run's
follower calls it sparingly: one log stream for the whole run, whose end tells the run
ended, and a node list every few seconds for the fail-fast rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agata.errors import AgataError, ErrorCode
from agata.files import write_private_file

__all__ = ["CONNECTION", "FlwrCli", "NodeStatus", "RunStatus", "flower_bin"]

logger = logging.getLogger(__name__)

CONNECTION = "run"
"""The name of the one SuperLink connection in the run's ``config.toml``."""

#: A CLI call that takes longer is ended (a SuperLink that accepts and never answers).
CALL_TIMEOUT = 120.0


def flower_bin(name: str) -> str:
    """The path of Flower's program ``name`` beside this interpreter (the one AGATA runs
    on), else ``name`` itself to be found on ``PATH``."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() else name


def flower_environment(home: Path | None = None) -> dict[str, str]:
    """The environment of Flower's processes: no telemetry, this interpreter's ``bin``
    first on ``PATH`` (a SuperLink starts ``flower-superexec``/``flwr-serverapp`` and a
    SuperNode ``flwr-clientapp`` by name), ``FLWR_HOME`` when given."""
    env = {
        "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "NO_COLOR": "1",
    }
    if home is not None:
        env["FLWR_HOME"] = str(home)
    return env


@dataclass(frozen=True)
class RunStatus:
    """A run as ``flwr ls`` shows it: ``status`` is pending / starting / running /
    finished:completed|failed|stopped; ``details`` Flower's reason, if any."""

    run_id: str
    status: str
    details: str = ""

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")


@dataclass(frozen=True)
class NodeStatus:
    """A SuperNode as ``flwr supernode list`` shows it (``status``: registered, online,
    offline, unregistered)."""

    node_id: str
    status: str

    @property
    def online(self) -> bool:
        return self.status == "online"


class FlwrCli:
    """``flwr`` against one SuperLink at ``address``.

    Args:
        home: the run's Flower home (made private); ``config.toml`` is written there.
        address: ``HOST:PORT`` of the SuperLink (its one HTTP port).
        root_certificates: the CA the SuperLink's certificate is checked against; None
            means ``insecure = true`` (allowed by the caller on loopback only).
    """

    def __init__(self, home: Path, address: str, root_certificates: Path | None) -> None:
        self.home = home
        self.address = address
        self.root_certificates = root_certificates
        self.program = flower_bin("flwr")

    def write_config(self, owner: tuple[int, int] | None = None) -> None:
        """Write the run's ``config.toml`` (one connection, the default; ``owner``'s
        when given)."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        security = (
            "insecure = true"
            if self.root_certificates is None
            else f"root-certificates = {json.dumps(str(self.root_certificates))}"
        )
        write_private_file(
            self.home / "config.toml",
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\naddress = {json.dumps(self.address)}\n{security}\n",
        )
        if owner is not None:
            os.chown(self.home / "config.toml", *owner)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **flower_environment(self.home)}

    # -- the commands -------------------------------------------------------------

    async def submit(self, app: Path, run_config: Mapping[str, str]) -> str:
        """``flwr run APP run --run-config ...``; returns the run id."""
        arguments = ["run", str(app), CONNECTION]
        for key, value in run_config.items():
            arguments += ["--run-config", f"{key}={value}"]
        reply = await self._call(arguments)
        return str(reply["run-id"])

    async def status(self, run_id: str) -> RunStatus:
        reply = await self._call(["ls", CONNECTION, "--run-id", run_id])
        for run in reply.get("runs") or []:
            if str(run.get("run-id")) == run_id:
                details = str(run.get("status-details") or "")
                return RunStatus(
                    run_id, str(run.get("status")), "" if details == "N/A" else details
                )
        raise AgataError(ErrorCode.NOT_FOUND, f"the SuperLink does not know run {run_id}")

    async def stop(self, run_id: str) -> None:
        await self._call(["stop", run_id, CONNECTION])

    async def register_node(self, public_key: Path, name: str) -> str:
        """``flwr supernode register``; returns the node id Flower gave the key."""
        reply = await self._call(["supernode", "register", str(public_key), CONNECTION])
        node_id = str(reply["node-id"])
        logger.info("SuperNode key of %s registered as node %s", name, node_id)
        return node_id

    async def nodes(self) -> list[NodeStatus]:
        reply = await self._call(["supernode", "list", CONNECTION])
        return [
            NodeStatus(str(node.get("node-id")), str(node.get("status")))
            for node in reply.get("nodes") or []
            if isinstance(node, dict)
        ]

    async def open_log(self, run_id: str) -> asyncio.subprocess.Process:
        """Start ``flwr log RUN_ID run --stream``: the ServerApp's log on stdout, until
        the run ends. The caller reads and ends it."""
        return await asyncio.create_subprocess_exec(
            self.program,
            "log",
            run_id,
            CONNECTION,
            "--stream",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )

    async def _call(self, arguments: Sequence[str]) -> dict[str, Any]:
        command = [self.program, *arguments, "--format", "json"]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
            )
        except OSError as exc:
            raise AgataError(
                ErrorCode.INTERNAL, f"cannot run {self.program}: {exc.strerror or exc}"
            ) from None
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                out, err = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise AgataError(
                ErrorCode.TIMEOUT, f"{shlex.join(command[1:3])} took over {CALL_TIMEOUT:.0f} s"
            ) from None
        reply = _json_reply(out)
        if reply is None:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise AgataError(
                ErrorCode.INTERNAL,
                f"flwr {shlex.join(arguments[:2])} gave no JSON reply "
                f"(exit code {process.returncode}): {last[0]}",
            )
        if not reply.get("success"):
            message = str(reply.get("error-message") or "no reason given")
            lines = [x.strip() for x in message.splitlines() if x.strip()]
            # The first line names the connection ("Using SuperLink: ..."): keep the rest.
            text = " ".join(x for x in lines if not x.startswith("Using SuperLink")) or message
            raise AgataError(ErrorCode.UNAVAILABLE, f"flwr {arguments[0]}: {text}")
        return reply


def _json_reply(out: bytes) -> dict[str, Any] | None:
    text = out.decode(errors="replace")
    start = text.find("{")
    if start < 0:
        return None
    try:
        value = json.loads(text[start:])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
