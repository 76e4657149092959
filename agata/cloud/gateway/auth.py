"""Who is calling: an operator, a device, or an anonymous (legacy) device."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from fastapi import Request

from agata.bus.rpc import RpcClient
from agata.cloud.credentials.tokens import hash_token
from agata.cloud.services.ratelog import RateLimitedWarning
from agata.errors import AgataError, ErrorCode
from agata.protocol import operations as ops
from agata.settings.shared_settings import DEFAULT_REQUEST_INTERVAL

logger = logging.getLogger(__name__)

#: Seconds a resolved operator token is trusted before it is looked up again (a token
#: revoked with `agata token revoke` stops working after at most this long).
CACHE_SECONDS = 10.0
#: A device's credential is trusted this many of its poll intervals
#: (``request_interval``): longer than one poll, or a fleet would never find its entries;
#: a revocation through the device registry drops the entry at once on every gateway
#: ("device" notification).
DEVICE_CACHE_POLLS = 6
#: Credentials kept at most; past it the expired ones go, then all if still too many.
CACHE_SIZE = 100_000
#: The 401 of a device call without a credential while ``--legacy-devices`` is off.
LEGACY_OFF = (
    "a device credential is required; calls without one come from devices of the "
    "original system: start the cloud with --legacy-devices to let them in"
)
#: Seconds between two warnings in the log about such calls.
LEGACY_WARNING_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "operator" | "device" | "anonymous"
    name: str = ""  # operator token name or device user_id
    token_id: str = ""  # an operator token's id (what rpc_exec_revoke_operator_token names)

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"


ANONYMOUS = Principal("anonymous")


class Authenticator:
    """Resolves callers, keeping what it resolved for a while (see the constants above);
    ``poll_interval`` is the fleet's ``request_interval``."""

    def __init__(self, rpc: RpcClient, *, poll_interval: float = DEFAULT_REQUEST_INTERVAL) -> None:
        self.rpc = rpc
        self.device_cache_seconds = DEVICE_CACHE_POLLS * poll_interval
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def principal(self, request: Request, *, query_token: bool = False) -> Principal:
        """Resolve the bearer token; with ``query_token`` (the event streams only:
        browsers' EventSource cannot send headers) also ``?token=``.

        Anywhere else a ``?token=`` is refused (401), not ignored: a token in a URL ends
        up in logs and browser history, and the caller should learn to send the header.
        """
        header = request.headers.get("authorization", "")
        token = ""
        if header[:7].lower() == "bearer ":
            token = header[7:].strip()
        elif not header and "token" in request.query_params:
            if not query_token:
                raise AgataError(
                    ErrorCode.UNAUTHENTICATED,
                    "a token in the URL (?token=) is accepted on event streams only; "
                    "send it as Authorization: Bearer",
                )
            token = request.query_params["token"]
        if not token:
            return ANONYMOUS
        if len(token) > 512:
            raise AgataError(ErrorCode.UNAUTHENTICATED, "token too long")
        digest = hash_token(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self.rpc.call(ops.RESOLVE_CREDENTIAL, {"token_sha256": digest})
        principal = Principal(
            found["kind"],
            found.get("name") or found.get("user_id") or "",
            found.get("token_id") or "",
        )
        if len(self._cache) >= CACHE_SIZE:
            self._cache = {d: entry for d, entry in self._cache.items() if entry[0] > now}
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
        ttl = self.device_cache_seconds if principal.kind == "device" else CACHE_SECONDS
        self._cache[digest] = (now + ttl, principal)
        return principal

    def forget_operator_token(self, token_id: str) -> None:
        """Drop what is cached for this operator token (it was revoked)."""
        for digest in [
            d
            for d, (_, p) in self._cache.items()
            if p.kind == "operator" and p.token_id == token_id
        ]:
            del self._cache[digest]

    def forget_device(self, user_id: str) -> None:
        """Drop what is cached for ``user_id``'s credential (it was revoked)."""
        for digest in [
            d for d, (_, p) in self._cache.items() if p.kind == "device" and p.name == user_id
        ]:
            del self._cache[digest]


def require_operator(principal: Principal) -> None:
    if principal.kind == "anonymous":
        raise AgataError(ErrorCode.UNAUTHENTICATED, "an operator token is required")
    if not principal.is_operator:
        raise AgataError(ErrorCode.FORBIDDEN, "only operators may do this")


class LegacyRefusals:
    """Refuses device calls of the original system (no credential, or a task password)
    while ``--legacy-devices`` is off, and tells the operator in the log.

    The warning names the caller's address and path and is written at most once per
    ``interval`` seconds (a fleet of such devices polls every few seconds); the next
    line says how many refusals were held back.
    """

    def __init__(self, interval: float = LEGACY_WARNING_SECONDS) -> None:
        self._warning = RateLimitedWarning(logger, interval)

    def refuse(self, request: Request, message: str = LEGACY_OFF) -> AgataError:
        """The 401 to raise for ``request`` (the warning is logged here)."""
        address = request.client.host if request.client else "?"
        self._warning.warn(
            "refused %s %s from %s: a call without a device credential (or with a task "
            "password), as devices of the original system make; start the cloud with "
            "--legacy-devices to let them in",
            request.method,
            request.url.path,
            address,
        )
        return AgataError(ErrorCode.UNAUTHENTICATED, message)
