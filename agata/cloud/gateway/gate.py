"""Authentication before the body: who may call a route is decided from the request's
headers alone, before the route reads (or spools) a single body byte.

FastAPI reads a route's body (and spools multipart uploads to temporary files) before
it runs the route's dependencies, so a check written as a dependency alone lets anyone
without a token make the gateway read, hold and spool bodies up to their size limit.
:class:`AuthGate` (ASGI) runs the same check first:

- a route is *gated* when one of its dependencies was made by :func:`gated` from a
  :data:`Check` (``operator``, ``caller``, … in :mod:`agata.cloud.gateway.app`);
- for a gated route the gate runs the check on a request without a body; a refusal
  (:class:`~agata.errors.AgataError`) is answered at once, with the body unread (the
  connection guard then closes the connection if the client keeps sending);
- the principal it found is kept in the request's scope (:data:`PRINCIPAL_KEY`), where
  the route's dependency finds it instead of resolving the token once more.

Routes without a gated dependency (public routes, downloads that check a task password,
unknown paths) pass through unchanged. The gate must sit inside CORS (so preflights and
refusals carry CORS headers) and outside nothing else that reads bodies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from agata.cloud.gateway.auth import Principal
from agata.errors import AgataError

#: Key of the request scope holding the :class:`Principal` the gate resolved.
PRINCIPAL_KEY = "agata.principal"

#: Who may call: resolves the caller from the request's headers and query string (never
#: its body), raising :class:`AgataError` (401/403) to refuse.
Check = Callable[[Request], Awaitable[Principal]]


def gated(check: Check) -> Check:
    """The route dependency of ``check``: the principal the gate found for this request,
    or (a request that did not pass the gate) the result of ``check`` itself."""

    async def dependency(request: Request) -> Principal:
        found = request.scope.get(PRINCIPAL_KEY)
        if isinstance(found, Principal):
            return found
        return await check(request)

    dependency.__gate_check__ = check  # type: ignore[attr-defined]
    dependency.__name__ = getattr(check, "__name__", "gated")
    return dependency


def _check_of(route: APIRoute) -> Check | None:
    for dependant in route.dependant.dependencies:
        check = getattr(dependant.call, "__gate_check__", None)
        if check is not None:
            return check
    return None


class AuthGate:
    """Runs a gated route's check before the route (see the module docstring).

    ``routes`` are the application's routes (read on the first request, when all are
    registered); ``refuse`` turns a refusal into the response the client gets."""

    def __init__(
        self,
        app: ASGIApp,
        routes: list[Any],
        refuse: Callable[[AgataError], Response],
    ) -> None:
        self.app = app
        self.routes = routes
        self.refuse = refuse
        self._exact: dict[str, list[tuple[APIRoute, Check]]] | None = None
        self._templated: list[tuple[APIRoute, Check]] = []

    def _build(self) -> dict[str, list[tuple[APIRoute, Check]]]:
        exact: dict[str, list[tuple[APIRoute, Check]]] = {}
        for route in self.routes:
            if not isinstance(route, APIRoute):
                continue
            check = _check_of(route)
            if check is None:
                continue
            if route.param_convertors:
                self._templated.append((route, check))
            else:
                exact.setdefault(route.path, []).append((route, check))
        self._exact = exact
        return exact

    def check_for(self, scope: Scope) -> tuple[APIRoute, Check] | None:
        """The route that will answer this request and its check, if it is gated."""
        exact = self._exact if self._exact is not None else self._build()
        method = scope.get("method", "")
        for route, check in exact.get(scope.get("path", ""), ()):
            if method in (route.methods or ()):
                return route, check
        for route, check in self._templated:
            if route.matches(scope)[0] is Match.FULL:
                return route, check
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        found = self.check_for(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        route, check = found
        try:
            principal = await check(Request(scope))  # no receive: the body stays unread
        except AgataError as exc:
            scope["route"] = route  # as the router would: metrics count it by route
            await self.refuse(exc)(scope, receive, send)
            return
        scope[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)
