"""The SuperLink process of one flower-app run: its command, address, TLS and folder.

One SuperLink per run, on the task's ``host:port`` (Flower 1.42 serves its Fleet,
Control and Runtime APIs on that one HTTP port), with everything of the run in the
run's folder::

    <work_root>/task_<id>/flower/
        home/        FLWR_HOME of the SuperLink and of AGATA's flwr calls (config.toml,
                     the installed app); never the user's ~/.flwr
        state.db     the SuperLink's database
        keys/        the SuperNode public keys registered for this run

Security, decided here once:

- With the cloud's certificate (``ssl_certfile``/``ssl_keyfile`` of the gateway, as
  :func:`agata.tls.certificate_files` resolves them) the SuperLink serves TLS with it
  and requires SuperNode authentication: only the devices AGATA registered a key for
  can join (:mod:`agata.flower.node_keys`).
- Without one it runs ``--insecure`` and unauthenticated, and only on a loopback host:
  a flower-app task on any other host without the cloud's certificate does not start.
- App dependencies are never installed at run time
  (``--disable-runtime-dependency-installation``): nothing downloads while a task runs;
  the app's dependencies must be installed beside AGATA.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from agata.errors import AgataError, ErrorCode, invalid
from agata.tls import CertificateFiles

__all__ = [
    "RunFolder",
    "check_port_free",
    "is_loopback",
    "superlink_arguments",
]


@dataclass(frozen=True)
class RunFolder:
    """The folders of one run (see the module docstring)."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def database(self) -> Path:
        return self.root / "state.db"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    def make(self, owner: tuple[int, int] | None = None) -> None:
        """Make the folders (0700); with ``owner`` (uid, gid: the task user the SuperLink
        runs as) the run's folder and its Flower home are that user's. The keys stay
        AGATA's."""
        for folder in (self.root, self.home, self.keys):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if owner is not None:
            for folder in (self.root, self.home):
                os.chown(folder, *owner)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def client_host(host: str) -> str:
    """Where AGATA's own flwr calls reach a SuperLink bound to ``host``."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else "[::1]" if host == "::" else host


def superlink_arguments(
    folder: RunFolder, host: str, port: int, tls: CertificateFiles | None
) -> list[str]:
    """The arguments of ``flower-superlink`` for a run; refuses ``--insecure`` off loopback."""
    if tls is None and not is_loopback(host):
        raise invalid(
            f"a flower-app task on {host} needs the cloud's TLS certificate (ssl_certfile and "
            "ssl_keyfile): without it the SuperLink would run unencrypted and let any node "
            "join; use a loopback host or configure the certificate"
        )
    arguments = [
        "--database",
        str(folder.database),
        "--host",
        host or "127.0.0.1",
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    if tls is None:
        return [*arguments, "--insecure"]
    return [
        *arguments,
        "--ssl-certfile",
        str(tls.certfile),
        "--ssl-keyfile",
        str(tls.keyfile),
        "--ssl-ca-certfile",
        str(tls.ca_file),
        "--enable-supernode-auth",
    ]


def check_port_free(host: str, port: int) -> None:
    """Raise CONFLICT naming the port when something already listens on it."""
    if not 0 < port < 65536:
        raise invalid(f"a flower-app task needs a TCP port for its SuperLink, got {port}")
    bind = host or "127.0.0.1"
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((bind.strip("[]"), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AgataError(
                    ErrorCode.CONFLICT,
                    f"port {port} on {bind} is taken: the run's SuperLink cannot listen there; "
                    "stop what uses it or give the task another port",
                ) from None
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT, f"cannot listen on {bind}:{port}: {exc.strerror}"
            ) from None


async def wait_listening(host: str, port: int, seconds: float, alive: asyncio.Event) -> bool:
    """Whether ``host:port`` accepts a connection within ``seconds``; gives up early when
    ``alive`` is cleared (the SuperLink exited)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline and alive.is_set():
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(client_host(host).strip("[]"), port), 1.0
            )
        except (OSError, TimeoutError):
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return True
    return False
