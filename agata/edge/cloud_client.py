"""The agent's only way to the cloud: the gateway's HTTP API (``docs/http-api.md``).

- ``POST /<operation>`` for the operations a device may call, with the device's
  credential as ``Authorization: Bearer``;
- ``GET /download/<task_id>/<file>`` for bundle files (streamed, hashed on the way);
- ``GET /api/devices/<user_id>/stream`` for push (see :mod:`agata.edge.push`);
- ``POST /api/devices/enroll`` to trade an enrollment token for a credential.

Every failure is an :class:`AgataError`: connection errors and timeouts are
``UNAVAILABLE``/``TIMEOUT``, an HTTP error keeps its status and the cloud's ``detail``,
a reply that is not what the API promises is ``INTERNAL`` ("garbage"). Connection
errors and 5xx are retried a few times with backoff and jitter; whether the cloud is
reachable is logged once per change, not once per attempt. A busy cloud answers 503
(or 429) with ``Retry-After``: the error then carries it
(:attr:`~agata.errors.AgataError.retry_after`) and every retry waits at least that long,
plus jitter (:meth:`~agata.retry.Backoff.after`).
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from agata.edge.device_info import DeviceInfo
from agata.errors import AgataError, ErrorCode
from agata.protocol.bundle_files import BundleFile
from agata.protocol.offers import TaskOffer
from agata.protocol.operations import CLIENT_REQUESTING_TASK, REPORT_DEVICE_TASK, UPDATE_USER_INFO
from agata.retry import Backoff, StateLog, is_transient
from agata.tls import client_context

# BundleFile and TaskOffer are the protocol's (agata.protocol), named here for the agent.
__all__ = [
    "BundleFile",
    "CloudClient",
    "TaskOffer",
    "retry_after",
]

logger = logging.getLogger(__name__)

ENROLL_PATH = "/api/devices/enroll"
_CHUNK = 64 * 1024


#: Longest Retry-After honoured, seconds (a wilder value is capped to it).
MAX_RETRY_AFTER = 600.0


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` of a 503 or 429 in seconds (delay-seconds or an HTTP date),
    capped to :data:`MAX_RETRY_AFTER`; None when absent, unreadable or another status."""
    if response.status_code not in (429, 503):
        return None
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    seconds = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _http_error(response: httpx.Response, what: str) -> AgataError:
    return AgataError(
        response.status_code, f"{what}: {_detail(response)}", retry_after=retry_after(response)
    )


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else str(detail)[:500]
    return str(body)[:500]


class CloudClient:
    """Talks to the cloud gateway at ``base_url``.

    Args:
        credential: the device credential (bearer token); None for a cloud that lets
            devices in anonymously (``--legacy-devices``).
        ca_file: PEM CA certificate(s) to trust for an ``https://`` cloud, instead of
            httpx's default (certifi's bundle, or ``SSL_CERT_FILE``).
        attempts: tries per call when the cloud is unreachable or answers 5xx.
        transport: an httpx transport (tests); the network by default.
    """

    def __init__(
        self,
        base_url: str,
        *,
        credential: str | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
        backoff: Backoff | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.credential = credential
        self.attempts = max(1, attempts)
        self._backoff = backoff or Backoff(0.2, 2.0)
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            verify=client_context(ca_file) if ca_file is not None else True,
        )
        self.reachability = StateLog(logger, f"cloud {self.base_url}")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> CloudClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- operations -----------------------------------------------------------------

    async def call(self, operation: str, body: dict[str, Any], *, retry: bool = True) -> Any:
        """``POST /<operation>`` and return its JSON value (retried when transient)."""
        return await self._post(f"/{operation}", body, operation, retry=retry)

    async def update_user_info(self, info: DeviceInfo) -> None:
        await self.call(UPDATE_USER_INFO, info.to_request())

    async def requesting_task(self, user_id: str) -> list[TaskOffer]:
        value = await self.call(CLIENT_REQUESTING_TASK, {"user_id": user_id})
        if not isinstance(value, list):
            raise AgataError(
                ErrorCode.INTERNAL,
                f"cloud returned garbage for {CLIENT_REQUESTING_TASK}: expected a list, "
                f"got {type(value).__name__}",
            )
        offers = []
        for item in value:
            try:
                offers.append(TaskOffer.model_validate(item))
            except ValidationError as exc:
                # One unusable offer must not hide the others from the device.
                logger.warning("ignoring an unusable task offer %.200r: %s", item, exc)
        return offers

    async def report_device_task(
        self,
        user_id: str,
        task_id: str,
        status: str,
        *,
        reason: str = "",
        round: int | None = None,
        metrics: dict[str, float] | None = None,
        log_lines: list[dict[str, str]] | None = None,
        quarantined_until: float | None = None,
        run: int | None = None,
    ) -> None:
        """Send ``rpc_exec_report_device_task``; ``log_lines`` (a failed client side's
        last output lines), ``quarantined_until`` (epoch seconds) and ``run`` (the run
        the report is about) are optional fields a cloud of the original system never
        sees, as they are only sent when set."""
        body: dict[str, Any] = {"user_id": user_id, "task_id": task_id, "status": status}
        if reason:
            body["reason"] = reason[:2000]
        if round is not None:
            body["round"] = round
        if metrics:
            body["metrics"] = dict(list(metrics.items())[:32])
        if log_lines:
            body["log_lines"] = log_lines
        if quarantined_until is not None:
            body["quarantined_until"] = quarantined_until
        if run is not None:
            body["run"] = run
        await self.call(REPORT_DEVICE_TASK, body)

    async def enroll(self, user_id: str, enrollment_token: str) -> str:
        """Trade an enrollment token for this device's credential (the token is spent)."""
        value = await self._post(
            ENROLL_PATH,
            {"user_id": user_id, "enrollment_token": enrollment_token},
            "enroll",
            retry=False,
        )
        credential = value.get("credential") if isinstance(value, dict) else None
        if not isinstance(credential, str) or not credential:
            raise AgataError(ErrorCode.INTERNAL, "cloud returned garbage for enroll")
        return credential

    # -- files and streams ----------------------------------------------------------

    async def download(
        self,
        path: str,
        destination: Path,
        *,
        max_bytes: int,
        auth: tuple[str, str] | None = None,
    ) -> tuple[int, str]:
        """Stream ``GET path`` into ``destination``; return (size, sha256 hex).

        Stops reading as soon as more than ``max_bytes`` arrive (``TOO_LARGE``).
        """
        digest = hashlib.sha256()
        size = 0
        try:
            async with self._http.stream("GET", path, auth=auth) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _http_error(response, f"GET {path}")
                with destination.open("wb") as out:
                    async for chunk in response.aiter_bytes(_CHUNK):
                        size += len(chunk)
                        if size > max_bytes:
                            raise AgataError(
                                ErrorCode.TOO_LARGE,
                                f"GET {path}: more than the {max_bytes} bytes listed",
                            )
                        digest.update(chunk)
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise self._connection_error(f"GET {path}", exc) from None
        self._mark_up()
        return size, digest.hexdigest()

    @asynccontextmanager
    async def stream(self, path: str, *, read_timeout: float) -> AsyncIterator[httpx.Response]:
        """Open a long-lived ``GET path`` (server-sent events); the caller reads lines."""
        timeout = httpx.Timeout(10.0, read=read_timeout)
        try:
            async with self._http.stream(
                "GET", path, timeout=timeout, headers={"Accept": "text/event-stream"}
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _http_error(response, f"GET {path}")
                self._mark_up()
                yield response
        except httpx.HTTPError as exc:
            raise self._connection_error(f"GET {path}", exc) from None

    # -- the retry layer ------------------------------------------------------------

    async def _post(self, path: str, body: dict[str, Any], what: str, *, retry: bool) -> Any:
        attempts = self.attempts if retry else 1
        backoff = self._backoff.fresh()
        for attempt in range(1, attempts + 1):
            try:
                return await self._post_once(path, body, what)
            except AgataError as exc:
                if attempt == attempts or not is_transient(exc):
                    raise
                delay = backoff.after(exc.retry_after)
                logger.debug("%s failed (%s); retry %d in %.2f s", what, exc, attempt, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _post_once(self, path: str, body: dict[str, Any], what: str) -> Any:
        try:
            response = await self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise self._connection_error(what, exc) from None
        wait = retry_after(response)
        if wait is not None:  # up, but asked to come back later
            self.reachability.set("busy", f"HTTP {response.status_code}, retry after {wait:g} s")
        elif response.status_code >= 500:
            self._mark_down(f"HTTP {response.status_code}")
        else:
            self._mark_up()
        if response.status_code >= 400:
            raise _http_error(response, what)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise AgataError(
                ErrorCode.INTERNAL,
                f"cloud returned garbage for {what}: {response.text[:200]!r}",
            ) from None

    def _connection_error(self, what: str, exc: httpx.HTTPError) -> AgataError:
        if isinstance(exc, httpx.TimeoutException):
            error = AgataError(ErrorCode.TIMEOUT, f"{what}: the cloud did not answer in time")
        else:
            reason = str(exc) or type(exc).__name__
            error = AgataError(ErrorCode.UNAVAILABLE, f"{what}: cloud unreachable: {reason}")
        self._mark_down(error.message)
        return error

    def _mark_up(self) -> None:
        self.reachability.set("reachable")

    def _mark_down(self, why: str) -> None:
        self.reachability.set("unreachable", why, level=logging.WARNING)
