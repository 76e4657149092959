"""The FastAPI application of the gateway (built by :func:`create_gateway`)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import logging
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agata import __version__
from agata.bus.bus import Bus
from agata.bus.rpc import RpcClient
from agata.bus.service import describe_errors
from agata.cloud.bundles.artifact_store import ArtifactStore
from agata.cloud.bundles.bundle_store import BundleStore
from agata.cloud.gateway.admission import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_WAIT,
    AdmissionControl,
)
from agata.cloud.gateway.auth import (
    ANONYMOUS,
    LEGACY_OFF,
    Authenticator,
    LegacyRefusals,
    Principal,
    require_operator,
)
from agata.cloud.gateway.device_stream import DeviceStreamScope
from agata.cloud.gateway.downloads import (
    DownloadSlots,
    FileStream,
    spooled_stream,
    too_many_downloads,
)
from agata.cloud.gateway.gate import AuthGate, gated
from agata.cloud.gateway.grants import DownloadGrants
from agata.cloud.gateway.limits import BodyLimit, RateLimit
from agata.cloud.gateway.metrics import GatewayMetrics
from agata.cloud.gateway.openapi import DOWNLOAD, LEGACY_DEVICE, PUBLIC, STREAM, install
from agata.cloud.gateway.run_artifacts import artifacts_router
from agata.cloud.gateway.streams import StreamHub
from agata.cloud.gateway.uploads import UPLOAD_BODY, uploaded_files, write_uploaded_files
from agata.cloud.gateway.web_protocol import web_protocol_router
from agata.cloud.gateway.wheelhouse import Wheelhouse, wheelhouse_router
from agata.errors import AgataError, ErrorCode
from agata.protocol import operations as ops
from agata.protocol.bundle_files import BundleFile
from agata.protocol.notifications import (
    DeviceChanged,
    Notification,
    OperatorTokenRevoked,
    QuarantineCleared,
    TaskChanged,
    TaskStopRequested,
)
from agata.protocol.replies import OPERATION_REPLIES, Health
from agata.settings.shared_settings import DEFAULT_REQUEST_INTERVAL
from agata.web import STATIC_ROOT

logger = logging.getLogger(__name__)

#: Operations a device may call for its own user_id.
DEVICE_OPERATIONS = frozenset(
    {
        ops.UPDATE_USER_INFO,
        ops.CLIENT_REQUESTING_TASK,
        ops.REPORT_DEVICE_TASK,
        ops.REGISTER_FLOWER_NODE,
    }
)
#: Operations never reachable over HTTP (the gateway's own plumbing).
INTERNAL_OPERATIONS = frozenset({ops.RESOLVE_CREDENTIAL, ops.CHECK_DOWNLOAD_PASSWORD})
PUBLIC_OPERATIONS = frozenset({ops.ENROLL_DEVICE})
#: The path of the polls of the whole fleet.
POLL_PATH = f"/{ops.CLIENT_REQUESTING_TASK}"
MAX_BODY_BYTES = 1024 * 1024


class ErrorBody(BaseModel):
    detail: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "model": ErrorBody}
    for status, text in [
        (400, "invalid arguments, with the reason"),
        (401, "no or an unknown token"),
        (403, "this token may not do that"),
        (404, "unknown task, device or operation"),
        (409, "conflict (duplicate id, task running or not running)"),
        (413, "request too large"),
        (429, "too many requests from this address (rate limit)"),
        (500, "a service failed"),
        (503, "a service is unavailable, or the cloud is busy (then with Retry-After)"),
        (504, "a service did not answer in time"),
    ]
}


#: The documented 200 of an operation whose reply is JSON ``null``.
NULL_REPLY: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "done (the reply is null)",
        "content": {"application/json": {"schema": {"type": "null"}}},
    },
    **ERROR_RESPONSES,
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented errors of a route: its own, and 429 and 503 (busy, with Retry-After)
    which any route may answer."""
    return {status: ERROR_RESPONSES[status] for status in (*statuses, 429, 503)}


@dataclass
class GatewayConfig:
    bundles: BundleStore  # the process's one bundle store (CloudNode's)
    artifacts: ArtifactStore  # and its one artifact store
    legacy_devices: bool = False
    rpc_timeout: float = 10.0
    max_upload_bytes: int = 50 * 1024 * 1024
    cors_origins: list[str] = field(default_factory=list)
    rate_limit: float = 0.0  # requests per second per client address; 0: no limit
    rate_burst: float = 0.0  # requests at once; 0: twice the rate, at least 10
    max_downloads: int = 4  # downloads at once per device, operator token or address
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT  # requests served at once (admission.py)
    admission_wait: float = DEFAULT_MAX_WAIT  # seconds a request may wait for a place
    wheelhouse: Path | None = None  # a folder of wheels served to devices; None: none
    poll_interval: float = DEFAULT_REQUEST_INTERVAL  # the fleet's request_interval (caches)


def error_response(exc: AgataError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.code is ErrorCode.UNAUTHENTICATED else None
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=headers)


def create_gateway(bus: Bus, config: GatewayConfig) -> FastAPI:
    """Build the gateway on a connected bus. Starting/stopping its stream hub is tied
    to the app's lifespan."""
    rpc = RpcClient(bus, timeout=config.rpc_timeout, service="gateway")
    auth = Authenticator(rpc, poll_interval=config.poll_interval)
    refusals = LegacyRefusals()
    hub = StreamHub(bus)
    grants = DownloadGrants()
    slots = DownloadSlots(config.max_downloads)
    upload_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def on_notification(message: Notification) -> None:
        # A task stopped, updated or deleted, or a device's record changed: check afresh.
        # (A device's report on a task changes neither what it is offered nor who it is.)
        if isinstance(message, TaskChanged | TaskStopRequested):
            grants.revoke_task(message.task_id)
        elif isinstance(message, DeviceChanged):
            grants.revoke_device(message.user_id)
            if message.revoked:
                auth.forget_device(message.user_id)
        elif isinstance(message, OperatorTokenRevoked):
            auth.forget_operator_token(message.token_id)

    hub.listeners.append(on_notification)
    metrics = GatewayMetrics(rpc)
    if config.legacy_devices:
        logger.warning(
            "LEGACY DEVICES ON: anonymous devices may report, ask for tasks and download "
            "bundles with the task's username/password"
        )

    # Who may call: checks of the request's headers, run by the gate before the body is
    # read (agata.cloud.gateway.gate); the routes depend on them through gated().
    async def check_operator(request: Request) -> Principal:
        principal = await auth.principal(request)
        require_operator(principal)
        return principal

    async def check_caller(request: Request) -> Principal:
        principal = await auth.principal(request)
        if principal.kind == "anonymous" and not config.legacy_devices:
            raise refusals.refuse(request)
        return principal

    # The event streams alone also take ?token= (EventSource cannot send headers).
    async def check_stream_operator(request: Request) -> Principal:
        principal = await auth.principal(request, query_token=True)
        require_operator(principal)
        return principal

    async def check_stream_caller(request: Request) -> Principal:
        principal = await auth.principal(request, query_token=True)
        if principal.kind == "anonymous" and not config.legacy_devices:
            raise refusals.refuse(request)
        return principal

    async def check_fleet_member(request: Request) -> Principal:
        principal = await auth.principal(request)
        if principal.kind not in ("operator", "device"):
            raise AgataError(
                ErrorCode.UNAUTHENTICATED, "a device credential or an operator token is required"
            )
        return principal

    operator = gated(check_operator)
    fleet_member = gated(check_fleet_member)
    caller = gated(check_caller)
    stream_operator = gated(check_stream_operator)
    stream_caller = gated(check_stream_caller)

    async def downloader(request: Request) -> str:
        return await _check_download(request, request.path_params.get("task_id", ""))

    async def anyone() -> Principal:
        return ANONYMOUS

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        await hub.start()
        yield
        await hub.stop()

    app = FastAPI(
        title="AGATA cloud gateway",
        version=__version__,
        description="Operations of the AGATA control plane for federated learning.",
        lifespan=lifespan,
    )
    install(app)
    app.state.hub = hub
    # Innermost: admission control reads a body before taking a place, so it must stay
    # inside the body limit, the rate limit and the gate's check of the request head (a
    # refused client takes no place, and no body byte is read before those checks).
    app.add_middleware(
        AdmissionControl,
        max_in_flight=config.max_in_flight,
        max_wait=config.admission_wait,
        held_target=config.rpc_timeout / 4,  # accepted calls end well within callers' timeout
    )
    # Inside CORS, so that its refusals carry CORS headers; outside admission control.
    app.add_middleware(AuthGate, routes=app.router.routes, refuse=error_response)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(AgataError)
    async def on_agata_error(_request: Request, exc: AgataError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(AgataError(ErrorCode.INVALID_ARGUMENT, describe_errors(exc.errors())))

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, upload_limit=config.max_upload_bytes)
    if config.rate_limit > 0:
        burst = config.rate_burst or max(10.0, 2 * config.rate_limit)
        app.add_middleware(RateLimit, rate=config.rate_limit, burst=burst)
    app.add_middleware(RequestMetrics, metrics=metrics)

    # -- health, metrics, UI -------------------------------------------------------

    @app.get(
        "/healthz",
        tags=["health"],
        response_model=Health,
        responses=errors(),
        openapi_extra=PUBLIC,
    )
    async def read_health() -> dict[str, str]:
        """Liveness: the gateway answers."""
        return {"status": "ok", "version": __version__}

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses=errors(),
        openapi_extra=PUBLIC,
    )
    async def read_metrics() -> Response:
        """Prometheus metrics: requests, latency, tasks running, devices."""
        body, content_type = await metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def read_root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.include_router(web_protocol_router())  # before the mount, which would take it
    if STATIC_ROOT.is_dir():
        app.mount("/ui", StaticFiles(directory=STATIC_ROOT, html=True), name="ui")

    # -- devices ---------------------------------------------------------------------

    @app.post(
        "/api/devices/enroll",
        tags=["devices"],
        response_model=OPERATION_REPLIES[ops.ENROLL_DEVICE],
        responses=errors(400, 401, 413, 503, 504),
        openapi_extra=PUBLIC,
    )
    async def enroll_device(body: ops.EnrollDevice) -> dict[str, str]:
        """Spend an enrollment token and get this device's own credential (once)."""
        result: dict[str, str] = await rpc.call(ops.ENROLL_DEVICE, body)
        return result

    @app.get(
        "/api/devices/{user_id}/stream",
        tags=["devices"],
        responses=errors(401, 403),
        openapi_extra=STREAM,
    )
    async def read_device_stream(
        user_id: ops.DeviceId, principal: Principal = Depends(stream_caller)
    ) -> StreamingResponse:
        """Server-sent events telling one device that its tasks changed: those it is
        offered, or was offered until this change; never another task's."""
        _check_device_access(principal, user_id, config.legacy_devices)
        # Offers only on a device's own credential: an anonymous device of the original
        # system is offered other replies (legacy offers) by its poll.
        scope = DeviceStreamScope(rpc, user_id, with_offers=principal.kind == "device")
        await scope.refresh()

        def accepts(message: Notification) -> bool:
            if isinstance(message, TaskChanged):
                return True  # then DeviceStreamScope.rewrite keeps the device's own
            return isinstance(message, QuarantineCleared) and message.user_id == user_id

        def revoked(message: Notification) -> bool:
            # The credential that opened this stream no longer holds: end it (the agent's
            # reconnection then gets a 401). An operator's view of it ends too.
            return (
                isinstance(message, DeviceChanged)
                and message.revoked is True
                and message.user_id == user_id
            )

        return _sse(hub.events(accepts, ends=revoked, rewrite=scope.rewrite))

    # -- operator stream -------------------------------------------------------------

    @app.get(
        "/api/stream",
        tags=["operators"],
        responses=errors(401, 403),
        openapi_extra=STREAM,
    )
    async def read_stream(principal: Principal = Depends(stream_operator)) -> StreamingResponse:
        """Server-sent events of every notification but ``stop_task`` (each kind an
        event: task, metric, log, event, device, device_task, quarantine_cleared,
        operator_token). The stream ends as soon as the token that opened it is revoked."""

        def revoked(message: Notification) -> bool:
            return (
                isinstance(message, OperatorTokenRevoked)
                and bool(principal.token_id)
                and message.token_id == principal.token_id
            )

        return _sse(hub.events(lambda _message: True, ends=revoked))

    # -- files -----------------------------------------------------------------------

    @app.post(
        "/api/tasks/{task_id}/files",
        tags=["files"],
        response_model=list[BundleFile],
        responses=errors(400, 401, 403, 404, 413),
        dependencies=[Depends(operator)],
        openapi_extra=UPLOAD_BODY,
    )
    async def upload_task_files(task_id: ops.TaskId, request: Request) -> list[dict[str, Any]]:
        """Upload bundle files (multipart field ``files``; ``bundle.zip`` is unpacked)."""
        async with uploaded_files(request) as files:  # closed however the request ends
            return await store_uploaded_files(task_id, files)

    async def store_uploaded_files(task_id: str, files: list[UploadFile]) -> list[dict[str, Any]]:
        await rpc.call(ops.GET_TASK, {"task_id": task_id})  # 404 for unknown tasks
        total = sum(f.size or 0 for f in files)
        if total > config.max_upload_bytes:
            raise AgataError(
                ErrorCode.TOO_LARGE,
                f"upload of {total} bytes exceeds the limit of {config.max_upload_bytes}",
            )
        lock = upload_locks.get(task_id)
        if lock is None:
            lock = upload_locks[task_id] = asyncio.Lock()
        # Files and recorded listing must agree: the write is undone if recording fails,
        # and uploads of one task take turns (an undo must not remove another's files).
        # The disk work (unpacking, fsync per file, hashing) runs in worker threads.
        async with lock, config.bundles.undo_on_error_async(task_id):
            listing = await asyncio.to_thread(write_uploaded_files, config.bundles, task_id, files)
            payload = [dataclasses.asdict(f) for f in listing]
            await rpc.call(ops.SET_TASK_FILES, {"task_id": task_id, "files": payload})
        return payload

    @app.get(
        "/api/tasks/{task_id}/files",
        tags=["files"],
        response_model=list[BundleFile],
        responses=errors(400, 401, 403, 404),
        dependencies=[Depends(operator)],
    )
    async def read_task_files(task_id: ops.TaskId) -> list[dict[str, Any]]:
        """The bundle listing with sizes and SHA-256."""
        task = await rpc.call(ops.GET_TASK, {"task_id": task_id})
        files: list[dict[str, Any]] = task["files"]
        return files

    @app.get(
        "/api/tasks/{task_id}/bundle.zip",
        tags=["files"],
        responses=errors(400, 401, 403, 404),
    )
    async def download_bundle(
        task_id: ops.TaskId, principal: Principal = Depends(operator)
    ) -> Response:
        """The whole bundle as a zip (429 while this token runs ``max_downloads``)."""
        await rpc.call(ops.GET_TASK, {"task_id": task_id})
        release = slots.take(f"operator:{principal.name}")
        if release is None:
            return too_many_downloads(slots.limit)
        return await spooled_stream(
            lambda target: config.bundles.write_archive(task_id, target),
            release=release,
            media_type="application/zip",
        )

    app.include_router(
        wheelhouse_router(Wheelhouse(config.wheelhouse), fleet_member, slots, errors(401, 404, 503))
    )
    app.include_router(
        artifacts_router(config.artifacts, rpc, operator, slots, errors(400, 401, 403, 404, 429))
    )

    @app.get(
        "/download/{task_id}/{name}",
        tags=["files"],
        responses=errors(400, 401, 403, 404),
        openapi_extra=DOWNLOAD,
    )
    async def download_file(
        task_id: ops.TaskId, name: str, who: str = Depends(downloader)
    ) -> Response:
        """One bundle file, for operators, matching devices, or legacy Basic auth;
        streamed from disk (429 while this downloader runs ``max_downloads``)."""
        try:
            handle = await asyncio.to_thread(config.bundles.open_file, task_id, name)
        except AgataError as exc:  # a name that cannot be in a bundle is not in this one
            if exc.code is not ErrorCode.INVALID_ARGUMENT:
                raise
            raise AgataError(ErrorCode.NOT_FOUND, f"task {task_id} has no such file") from None
        release = slots.take(who)
        if release is None:
            handle.close()
            return too_many_downloads(slots.limit)
        return FileStream(handle, release=release)

    async def _check_download(request: Request, task_id: str) -> str:
        """Check who downloads; return whom the download counts against: the device,
        the operator token, or (a task password, shared by a task's devices) the
        client address."""
        header = request.headers.get("authorization", "")
        if header[:6].lower() == "basic ":
            if not config.legacy_devices:
                raise refusals.refuse(
                    request,
                    "task passwords are for devices of the original system: start the "
                    "cloud with --legacy-devices to accept them",
                )
            username, password = _basic(header)
            ok = await rpc.call(
                ops.CHECK_DOWNLOAD_PASSWORD,
                {"task_id": task_id, "username": username, "password": password},
            )
            if not ok.get("ok"):
                raise AgataError(ErrorCode.UNAUTHENTICATED, "wrong task username or password")
            return f"address:{request.client.host if request.client else ''}"
        principal = await auth.principal(request)
        if principal.is_operator:
            return f"operator:{principal.name}"
        if principal.kind != "device":
            raise AgataError(ErrorCode.UNAUTHENTICATED, "a device credential is required")
        if grants.allowed(principal.name, task_id):
            return f"device:{principal.name}"
        offers = await rpc.call(
            ops.CLIENT_REQUESTING_TASK, {"user_id": principal.name, "legacy": False}
        )
        if not any(offer.get("ID") == task_id for offer in offers):
            raise AgataError(
                ErrorCode.FORBIDDEN, f"task {task_id} is not running or not for this device"
            )
        grants.grant(principal.name, task_id)
        return f"device:{principal.name}"

    # -- operations ------------------------------------------------------------------

    for operation, model in ops.OPERATION_MODELS.items():
        if operation in INTERNAL_OPERATIONS:
            continue
        who = (
            anyone
            if operation in PUBLIC_OPERATIONS
            else caller
            if operation in DEVICE_OPERATIONS
            else operator
        )
        app.post(
            f"/{operation}",
            tags=["operations"],
            name=operation,
            summary=operation,
            description=(model.__doc__ or "").strip() or None,
            # The reply goes out as the service encoded it (a Response: not validated
            # again); the model documents it, and tests hold the services to it.
            response_model=OPERATION_REPLIES[operation],
            responses=ERROR_RESPONSES if OPERATION_REPLIES[operation] else NULL_REPLY,
            openapi_extra=_security(operation, config.legacy_devices),
        )(_operation_route(operation, model, rpc, who, config.legacy_devices))

    # Only rpc_* paths: another POST to a GET route (/healthz) is then a 405, not a 404.
    @app.post("/rpc_{operation}", tags=["operations"], include_in_schema=False)
    async def call_unknown_operation(operation: str) -> Response:
        raise AgataError(ErrorCode.NOT_FOUND, f"rpc_{operation} is an invalid RPC function")

    # The router tries its routes in order: the one every device calls every poll
    # interval goes first (a literal path: no other route matched it before, so no
    # request changes hands; the rest keep their order).
    app.router.routes.sort(key=lambda route: getattr(route, "path", "") != POLL_PATH)
    return app


class RequestMetrics:
    """Counts and times requests by route (pure ASGI: no cost to streaming responses)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            if path == "/rpc_{operation}":
                path = "/{unknown}"  # never a label per made-up name
            self.metrics.observe(scope["method"], path, status, time.perf_counter() - started)


def _operation_route(
    operation: str, model: type[ops.Request], rpc: RpcClient, who: Any, legacy: bool
) -> Any:
    """The route of one operation: check who may call it (``who``: a dependency that
    authenticates), then, for a device, that it acts for itself; forward it to the bus."""

    async def call_operation(body: ops.Request, principal: Principal = Depends(who)) -> Response:
        if operation in DEVICE_OPERATIONS:
            _check_device_access(principal, str(getattr(body, "user_id", "")), legacy)
        if operation == ops.REGISTER_FLOWER_NODE and principal.kind == "anonymous":
            # A SuperNode key lets a node into a run: only a device with its credential.
            raise AgataError(
                ErrorCode.UNAUTHENTICATED, "joining a flower-app run needs a device credential"
            )
        payload = body.model_dump(mode="json", exclude_unset=True)
        if operation == ops.CLIENT_REQUESTING_TASK:
            # Only the gateway knows whether the call came without a credential.
            payload["legacy"] = principal.kind == "anonymous" or payload.get("legacy") is True
        return Response(await rpc.call_json(operation, payload), media_type="application/json")

    # The body's model is the operation's (a real class, not a postponed annotation).
    call_operation.__annotations__ = {"body": model, "principal": Principal, "return": Response}
    return call_operation


def _security(operation: str, legacy: bool) -> dict[str, Any] | None:
    if operation in PUBLIC_OPERATIONS:
        return PUBLIC
    if legacy and operation in DEVICE_OPERATIONS:
        return LEGACY_DEVICE
    return None


def _check_device_access(principal: Principal, user_id: str, legacy: bool) -> None:
    if principal.is_operator:
        return
    if principal.kind == "device":
        if principal.name != user_id:
            raise AgataError(ErrorCode.FORBIDDEN, "a device may only act for itself")
        return
    if not legacy:  # the callers' dependency refused it already, with a warning
        raise AgataError(ErrorCode.UNAUTHENTICATED, LEGACY_OFF)


def _basic(header: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        username, _, password = decoded.partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AgataError(ErrorCode.UNAUTHENTICATED, "malformed Basic credentials") from None
    return username, password


def _sse(events: Any) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
