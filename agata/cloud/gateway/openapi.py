"""The gateway's published OpenAPI document: what each route really answers.

FastAPI documents a 422 for every route with parameters, but the gateway turns request
validation errors into 400 with the reason (the original's contract); and it knows
nothing of the gateway's own authentication. :func:`install` fixes both: no 422 (each
route declares its 400), a ``bearer`` security scheme required by default, and the
routes that are public or also accept other credentials say so with the constants below.
It also makes a 405's ``Allow`` list every method of the path (Starlette names only
those of the first route that matched the path).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match

#: ``openapi_extra`` of a route that needs no credential.
PUBLIC: dict[str, Any] = {"security": []}
#: ``openapi_extra`` of a stream: the token may also come as ``?token=`` (EventSource).
STREAM: dict[str, Any] = {"security": [{"bearer": []}, {"query_token": []}]}
#: ``openapi_extra`` of a bundle download: a token, or the task's password (legacy only).
DOWNLOAD: dict[str, Any] = {"security": [{"bearer": []}, {"task_password": []}]}
#: ``openapi_extra`` of a device operation with ``--legacy-devices``: anonymous allowed.
LEGACY_DEVICE: dict[str, Any] = {"security": [{"bearer": []}, {}]}

SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "an operator token (agata_op_…) or a device credential (agata_dev_…)",
    },
    "query_token": {"type": "apiKey", "in": "query", "name": "token"},
    "task_password": {
        "type": "http",
        "scheme": "basic",
        "description": "the task's username/password; only with --legacy-devices",
    },
}


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` by the corrected document (built once, on first use)."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.setdefault("components", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(unused, None)
            components["securitySchemes"] = SECURITY_SCHEMES
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            allowed: set[str] = set()
            for route in app.router.routes:
                if route.matches(request.scope)[0] is not Match.NONE:
                    allowed |= getattr(route, "methods", None) or set()
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(allowed))}
        return await http_exception_handler(request, exc)
