"""A cloud node: the services and the gateway of one process, built from settings.

``agata cloud run`` starts everything in one process (the default, on ``memory://``);
with an ``amqp://`` bus each service may run in a process of its own and several
replicas share the work. Task bundles live under ``<data_dir>/tasks`` and must be the
same folder (a shared file system) for every process that runs the task manager or
the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from agata.bus import Bus, create_bus
from agata.bus.service import Service
from agata.cloud.bundles.artifact_store import ArtifactStore
from agata.cloud.bundles.bundle_store import BundleStore
from agata.cloud.credentials.tokens import OPERATOR_PREFIX, hash_token, new_token
from agata.cloud.gateway import GatewayConfig, create_gateway
from agata.cloud.gateway.limits import guarded_http_protocol, make_room_for_connections
from agata.cloud.services.device_registry import DeviceRegistry
from agata.cloud.services.events import EventRecorder
from agata.cloud.services.notifier import Notifier
from agata.cloud.services.task_manager import TaskManager
from agata.errors import AgataError, ErrorCode
from agata.files import make_private_dir, make_private_file, write_private_file
from agata.runtime.limits import Limits
from agata.runtime.sandbox import TaskSandbox, default_task_dir
from agata.settings import CloudSettings
from agata.store.async_store import AsyncStore
from agata.store.store import BundleFile, Store
from agata.store.store_factory import create_store
from agata.tls import certificate_files, server_context

logger = logging.getLogger(__name__)

SERVICES = ("task-manager", "device-registry", "gateway")


class CloudNode:
    """Some or all cloud services of one process."""

    def __init__(
        self,
        settings: CloudSettings,
        *,
        services: Iterable[str] = SERVICES,
        bus: Bus | None = None,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.services = tuple(services)
        unknown = set(self.services) - set(SERVICES)
        if unknown:
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT,
                f"unknown service {sorted(unknown)[0]!r}; choose from {', '.join(SERVICES)}",
            )
        self.data_dir = settings.data_dir.resolve()
        self.bus = bus or create_bus(settings.bus_url)
        self._own_store = store is None
        self._store = store
        self._async_store: AsyncStore | None = None
        self.bundles = BundleStore(self.data_dir / "tasks")
        self.artifacts = ArtifactStore(
            self.data_dir / "artifacts", max_bytes=settings.artifact_max_mb * 1024 * 1024
        )
        self._running: list[Service] = []
        self._recorder: EventRecorder | None = None
        self.app: FastAPI | None = None
        self._server: uvicorn.Server | None = None
        self._server_task: asyncio.Task[None] | None = None
        self._tls: ssl.SSLContext | None = None
        self.port: int | None = None
        self.first_token: str | None = None

    @property
    def store(self) -> Store:
        """The synchronous store (opened on first use): for code without an event loop."""
        if self._store is None:
            make_private_dir(self.data_dir)
            url = self.settings.database_url
            database = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
            if database and database != ":memory:" and not database.startswith("file:"):
                if "?" not in database:  # a plain file: 0600 before SQLite creates it
                    make_private_file(Path(database))
            self._store = create_store(url)
        return self._store

    @property
    def async_store(self) -> AsyncStore:
        """The one :class:`AsyncStore` of this process, which every service is given."""
        if self._async_store is None:
            self._async_store = AsyncStore(self.store)
        return self._async_store

    @property
    def url(self) -> str:
        host = self.settings.gateway_host
        shown = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host
        scheme = "https" if self.settings.ssl_certfile else "http"
        return f"{scheme}://{shown}:{self.port}"

    def ensure_operator_token(self) -> str | None:
        """Create a first operator token when there is none; returns it (else None)."""
        if self.store.list_operator_tokens():
            return None
        token = new_token(OPERATOR_PREFIX)
        self.store.add_operator_token("first operator", hash_token(token))
        write_private_file(self.data_dir / "operator-token", token + "\n")
        return token

    async def start(self, *, first_token: bool = False) -> None:
        """Start the services; with ``first_token`` create the first operator token
        (``self.first_token``) once the settings proved usable and before the gateway
        answers, so whoever waits on ``/healthz`` finds the token file."""
        s = self.settings
        if "gateway" in self.services and s.ssl_certfile is not None:
            self._tls = server_context(s.ssl_certfile, s.ssl_keyfile)  # a bad file stops here
        await self.bus.connect()
        await asyncio.to_thread(lambda: self.store)  # opens (and migrates) off the loop
        if "task-manager" in self.services or "gateway" in self.services:
            await asyncio.to_thread(self.recover_bundles)
        if "task-manager" in self.services:
            sandbox = TaskSandbox(
                f"cloud:{self.data_dir}",
                task_user=s.task_user,
                task_dir=s.task_dir or default_task_dir(self.data_dir),
                limits=Limits.from_mapping(s.task_limits),
                index_options=s.env_index_options,
                env_timeout=s.env_timeout,
                env_max_bytes=s.env_cache_mb * 1024 * 1024,
                allow_direct=s.env_allow_direct,
            )
            logger.info("server sides: %s", sandbox.describe())
            manager = TaskManager(
                self.bus,
                self.async_store,
                self.bundles,
                self.data_dir / "work",
                poll_interval=s.request_interval,
                reconcile=s.reconcile,
                legacy_devices=s.legacy_devices,
                hide_internal_errors=s.hide_internal_errors,
                grace=s.server_grace_seconds,
                register_events=s.register_events,
                sandbox=sandbox,
                flower_tls=certificate_files(s.ssl_certfile, s.ssl_keyfile, s.ssl_ca_file),
                artifacts=self.artifacts,
                max_running_tasks=s.max_running_tasks,
            )
            manager.max_in_flight = s.service_max_in_flight
            await manager.start()
            self._running.append(manager)
            self._recorder = EventRecorder(self.bus, self.async_store, Notifier(self.bus))
            await self._recorder.start()
        if "device-registry" in self.services:
            registry = DeviceRegistry(
                self.bus,
                self.async_store,
                hide_internal_errors=s.hide_internal_errors,
                register_events=s.register_events,
                poll_interval=s.request_interval,
            )
            registry.max_in_flight = s.service_max_in_flight
            await registry.start()
            self._running.append(registry)
        if "gateway" in self.services:
            self.app = create_gateway(
                self.bus,
                GatewayConfig(
                    bundles=self.bundles,
                    legacy_devices=s.legacy_devices,
                    rpc_timeout=s.rpc_timeout,
                    max_upload_bytes=s.max_upload_bytes,
                    cors_origins=list(s.cors_origins),
                    rate_limit=s.rate_limit,
                    rate_burst=s.rate_burst,
                    max_downloads=s.max_downloads,
                    max_in_flight=s.max_in_flight,
                    admission_wait=s.admission_wait,
                    wheelhouse=s.wheelhouse,
                    poll_interval=s.request_interval,
                    artifacts=self.artifacts,
                ),
            )
            if first_token:
                self.first_token = await asyncio.to_thread(self.ensure_operator_token)
            await self._serve(self.app)

    def recover_bundles(self) -> dict[str, str]:
        """Finish or undo the uploads a crash interrupted, before any service answers.

        A bundle whose files match the listing in the store keeps them; any other is put
        back as it was before the interrupted upload (:meth:`BundleStore.recover`).
        """

        def recorded(task_id: str) -> list[BundleFile] | None:
            try:
                return list(self.store.get_task(task_id).files)
            except AgataError as exc:
                if exc.code is ErrorCode.NOT_FOUND:
                    return None
                raise

        return self.bundles.recover(recorded)

    async def _serve(self, app: FastAPI) -> None:
        s = self.settings
        family = socket.AF_INET6 if ":" in s.gateway_host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when
        # the listening socket names its protocol. With protocol 0 Nagle stays on and
        # every response after the first on a keep-alive connection waits ~40 ms for the
        # client's delayed ACK (docs/benchmarks.md).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.gateway_host, s.gateway_port))
        except OSError as exc:
            sock.close()
            raise AgataError(
                ErrorCode.UNAVAILABLE,
                f"cannot listen on {s.gateway_host}:{s.gateway_port} ({exc.strerror}); "
                "choose another with --port (0 picks a free one)",
            ) from None
        self.port = sock.getsockname()[1]
        tls: dict[str, Any] = {}
        if self._tls is not None:
            context = self._tls
            tls = {
                "ssl_certfile": s.ssl_certfile,
                "ssl_keyfile": s.ssl_keyfile,
                "ssl_context_factory": lambda _config, _default: context,  # loaded in start()
            }
        held = make_room_for_connections(s.max_connections)
        if held < s.max_connections:
            logger.warning(
                "the open-file limit lets the gateway hold about %d connections, fewer than "
                "max_connections (%d): past it the oldest idle connections are closed; "
                "raise the limit (ulimit -n, or LimitNOFILE= in a systemd unit)",
                held,
                s.max_connections,
            )
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=5,
            limit_concurrency=s.max_connections,
            timeout_graceful_shutdown=3,
            h11_max_incomplete_event_size=64 * 1024,
            # head and body deadlines, head size cap, slow bodies per address (slow loris)
            http=guarded_http_protocol(
                body_timeout=s.body_timeout,
                body_min_rate=s.body_min_rate,
                max_slow_bodies=s.max_slow_bodies,
            ),
            ws="none",
            **tls,
        )
        self._server = uvicorn.Server(config)
        self._server_task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._server_task.done():
                await self._server_task
                raise AgataError(ErrorCode.UNAVAILABLE, "the gateway did not start")
            await asyncio.sleep(0.01)
        logger.info("gateway listening on %s", self.url)

    async def wait(self) -> None:
        """Until the gateway stops (or forever for bus-only services)."""
        if self._server_task is not None:
            await self._server_task
        else:
            await asyncio.Event().wait()

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.state.hub.stop()  # ends open event streams first
        if self._server is not None:
            self._server.should_exit = True
            if self._server_task is not None:
                with contextlib.suppress(Exception):
                    await self._server_task
        for service in reversed(self._running):
            await service.stop()
        self._running.clear()
        if self._recorder is not None:
            await self._recorder.stop()
        await self.bus.close()
        if self._async_store is not None:
            await self._async_store.shutdown()
            self._async_store = None
        if self._own_store and self._store is not None:
            self._store.close()
