"""A cloud in a child process (``python -m agata cloud run``) on a free loopback port.

Used to measure the cloud under a simulated fleet without the simulator sharing its
event loop: the cloud gets a process (and, CPU permitting, a core) of its own. Its
output goes to ``<data_dir>/cloud.out`` and ``<data_dir>/cloud.log``; the first
operator token is read from ``<data_dir>/operator-token``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path
from types import TracebackType

from agata.errors import AgataError, ErrorCode

__all__ = ["SPLIT_SERVICES", "CloudProcess", "CloudProcesses"]

#: The services of a split cloud, one process each (the gateway last).
SPLIT_SERVICES = ("task-manager", "device-registry", "gateway")

ENTRY = ["-m", "agata"]
_URL_LINE = re.compile(r"AGATA cloud on (http://\S+)")


class CloudProcess:
    """``agata cloud run`` as a child process; ``async with`` starts and stops it."""

    def __init__(
        self,
        data_dir: Path,
        *,
        bus_url: str = "memory://",
        db_url: str | None = None,
        legacy_devices: bool = False,
        log_level: str = "WARNING",
        services: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.name = name or "-".join(services) or "cloud"
        """Names its output files: replicas of one service in one ``data_dir`` need
        names of their own."""
        self.env = dict(env or {})
        """Extra environment of the cloud (``AGATA_*`` settings)."""
        self.port = 0
        """The gateway's port: any free one at the first start, the same on a restart."""
        self.bus_url = bus_url
        self.db_url = db_url
        self.legacy_devices = legacy_devices
        self.log_level = log_level
        self.services = services
        self.url = ""
        self.operator_token = ""
        self._process: asyncio.subprocess.Process | None = None
        self._log_path = data_dir / "cloud.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, timeout: float = 60.0) -> None:
        """Start the cloud (again, after :meth:`stop`: same data, same port)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.url = ""
        out_path = self.data_dir / f"{self.name}.out"
        self._log_path = self.data_dir / f"{self.name}.log"
        command = [sys.executable, *ENTRY, "cloud", "run", "--data-dir", str(self.data_dir),
                   "--host", "127.0.0.1", "--port", str(self.port),
                   "--bus", self.bus_url]  # fmt: skip
        if self.db_url:
            command += ["--db", self.db_url]
        if self.legacy_devices:
            command.append("--legacy-devices")
        for service in self.services:
            command += ["--service", service]
        env = {
            **os.environ,
            "AGATA_LOG_LEVEL": self.log_level,
            "FLWR_TELEMETRY_ENABLED": "0",
            **self.env,
        }
        with out_path.open("wb") as out, self._log_path.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=log, env=env
            )
        if self.services and "gateway" not in self.services:
            await asyncio.sleep(0.5)  # bus-only: nothing to wait for but an early death
            if self._process.returncode is not None:
                raise AgataError(
                    ErrorCode.UNAVAILABLE, f"the cloud process died: {self.log_tail()}"
                )
            return
        deadline = time.monotonic() + timeout
        while not self.url:
            text = out_path.read_text(errors="replace")
            if match := _URL_LINE.search(text):
                self.url = match.group(1)
                self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])
                break
            if self._process.returncode is not None or time.monotonic() > deadline:
                await self.stop()
                raise AgataError(
                    ErrorCode.UNAVAILABLE,
                    f"the cloud process did not start: {self.log_tail()}",
                )
            await asyncio.sleep(0.05)
        token_file = self.data_dir / "operator-token"
        if token_file.exists():
            self.operator_token = token_file.read_text().strip()
        else:  # a database that has operators already (--db): make one more
            self.operator_token = await self._create_token()

    async def _create_token(self) -> str:
        command = [sys.executable, *ENTRY, "token", "create", "--name", "agata simulate",
                   "--data-dir", str(self.data_dir)]  # fmt: skip
        if self.db_url:
            command += ["--db", self.db_url]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await process.communicate()
        if process.returncode != 0:
            await self.stop()
            raise AgataError(
                ErrorCode.UNAVAILABLE, f"cannot create an operator token: {err.decode()[-500:]}"
            )
        return out.decode().strip().splitlines()[-1]

    def log_tail(self, lines: int = 20) -> str:
        path = self._log_path
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU time of the cloud process so far (Linux ``/proc``); its
        task processes are not included."""
        if self._process is None:
            return 0.0
        try:
            stat = Path(f"/proc/{self._process.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return ticks / os.sysconf("SC_CLK_TCK")

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM (the cloud stops its tasks' server sides), SIGKILL after ``grace``."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def __aenter__(self) -> CloudProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


class CloudProcesses:
    """The cloud scaled out on ``amqp://``: one process per service (task manager,
    device registry, gateway) sharing the bus, the database and ``data_dir`` — the
    deployment of several machines, on one. Same interface as :class:`CloudProcess`.

    ``replicas`` runs several processes of a service (e.g. ``{"gateway": 2,
    "task-manager": 2}``; one of each by default): replicas of a back-end service share
    its queues (competing consumers), each gateway listens on a port of its own
    (:attr:`gateways`; :attr:`url` is the first's)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        bus_url: str,
        db_url: str | None = None,
        legacy_devices: bool = False,
        log_level: str = "WARNING",
        replicas: dict[str, int] | None = None,
    ) -> None:
        if not bus_url.startswith("amqp"):
            raise AgataError(ErrorCode.INVALID_ARGUMENT, "a split cloud needs an amqp:// bus")
        counts = {service: 1 for service in SPLIT_SERVICES} | dict(replicas or {})
        unknown = set(counts) - set(SPLIT_SERVICES)
        if unknown or min(counts.values()) < 1:
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT,
                f"replicas: at least one of each of {', '.join(SPLIT_SERVICES)}, not {counts}",
            )
        self.parts = [
            CloudProcess(
                data_dir,
                bus_url=bus_url,
                db_url=db_url,
                legacy_devices=legacy_devices,
                log_level=log_level,
                services=(service,),
                name=service if counts[service] == 1 else f"{service}-{index + 1}",
            )
            for service in SPLIT_SERVICES
            for index in range(counts[service])
        ]
        self.data_dir = data_dir

    @property
    def gateways(self) -> list[CloudProcess]:
        return [part for part in self.parts if part.services == ("gateway",)]

    @property
    def gateway(self) -> CloudProcess:
        return self.gateways[0]

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def operator_token(self) -> str:
        return self.gateway.operator_token

    async def start(self, timeout: float = 60.0) -> None:
        try:
            for part in self.parts:
                await part.start(timeout)
            await self._wait_ready(timeout)
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, timeout: float) -> None:
        """Until both back-end services answer through the gateway."""
        import httpx

        headers = {"Authorization": f"Bearer {self.operator_token}"}
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=15) as http:
            for operation in ("rpc_exec_list_tasks", "rpc_exec_list_devices"):
                while (await http.post(f"/{operation}", json={})).status_code != 200:
                    if time.monotonic() > deadline:
                        raise AgataError(
                            ErrorCode.UNAVAILABLE, f"the split cloud did not answer {operation}"
                        )
                    await asyncio.sleep(0.2)

    def cpu_seconds(self) -> float:
        return sum(part.cpu_seconds() for part in self.parts)

    async def stop(self, grace: float = 15.0) -> None:
        for part in reversed(self.parts):
            await part.stop(grace)

    async def __aenter__(self) -> CloudProcesses:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
