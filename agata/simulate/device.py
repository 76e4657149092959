"""One simulated device: the edge agent's conversation with the cloud, without FL.

A :class:`SimulatedDevice` enrolls (or stays anonymous in legacy mode), reports its
attributes, then polls ``rpc_exec_client_requesting_task`` every poll interval (with
jitter). The first time it is offered a task version it does what a real agent does
for a trivial client side: reports ``downloading``, downloads every bundle file (real
GETs, size and SHA-256 checked against the listing), reports ``running``, a couple of
rounds with made-up metrics, and ``finished``. No process is started.

All devices share one :class:`DeviceApi` (one ``httpx.AsyncClient``, one connection
pool); each request carries its device's own credential. A failed request ends the
device's current cycle (counted by kind in :class:`~agata.simulate.stats.FleetStats`)
and the device tries again, like the agent does: after a backoff (0.5 s doubling up to
the poll interval, with jitter) rather than a whole poll.

Reports are the exception, because the agent treats them so (``agata/edge/reports.py``):
it queues a report and sends it again, with backoff, after a failure that may pass (a
timeout, a refused or broken connection, a 5xx or 429, a reply that is not JSON) until
it is delivered. A simulated device does the same, up to :data:`REPORT_ATTEMPTS`
attempts (``DeviceConfig.report_attempts``), with the agent's backoff. Each failed
attempt that is sent again is counted as a *retry* (by kind, in the latencies too):
nothing was lost. A report refused for
good (another 4xx) or still failing at its last attempt is an *error*: that report is
lost. Nothing is retried without being counted.

A busy cloud's refusal (503 or 429 with ``Retry-After``) is not a failure: like the
agent, the device waits as asked, plus jitter (:meth:`~agata.edge.backoff.Backoff.after`),
and sends the same request again until it is accepted (at most
:data:`BUSY_PATIENCE` seconds, then it is a failure ``http_503``/``http_429``). Such
refusals are counted in :attr:`DeviceApi.shed`, per operation; the request's latency
counts from its first attempt to its answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from agata.edge.backoff import Backoff
from agata.edge.cloud_client import ENROLL_PATH, retry_after
from agata.protocol.offers import TaskOffer
from agata.protocol.operations import (
    CLIENT_REQUESTING_TASK,
    REPORT_DEVICE_TASK,
    UPDATE_USER_INFO,
)
from agata.simulate.stats import FleetStats

__all__ = [
    "REPORT_ATTEMPTS",
    "SENSORS",
    "DeviceApi",
    "DeviceAttributes",
    "DeviceConfig",
    "RequestFailed",
    "SimulatedDevice",
    "device_attributes",
    "fleet_attributes",
    "sent_again_by_agent",
]

logger = logging.getLogger(__name__)

SENSORS = ("camera", "microphone", "gps", "accelerometer")
#: Attempts of one report before it counts as lost. The agent never gives up (its queue
#: is bounded instead); six attempts with its backoff wait ~15 s besides the requests'
#: own time, which outlasts a cloud that is merely slow.
REPORT_ATTEMPTS = 6
#: The agent's backoff between two attempts of a report (``ReportSender``): first and
#: longest delay, in seconds.
REPORT_BACKOFF = (0.5, 30.0)


def sent_again_by_agent(kind: str) -> bool:
    """Whether the agent's report sender tries again after a failure of ``kind``
    (``agata.edge.cloud_client.is_transient``: unreachable, timed out, 5xx, 429, garbage)."""
    if kind.startswith("http_"):
        status = int(kind[5:]) if kind[5:].isdigit() else 0
        return status >= 500 or status == 429
    return kind not in ("bundle_mismatch", "no_enrollment_token")


#: Longest a simulated device keeps resending one request the cloud refused as busy.
BUSY_PATIENCE = 300.0


class RequestFailed(Exception):
    """A request of a simulated device failed (already counted)."""

    def __init__(
        self, operation: str, kind: str, detail: str = "", *, retried: bool = False
    ) -> None:
        super().__init__(f"{operation}: {kind}{': ' + detail if detail else ''}")
        self.operation = operation
        self.kind = kind
        self.retried = retried
        """Counted as a retry: the caller sends the request again."""


@dataclass(frozen=True, slots=True)
class DeviceAttributes:
    user_id: str
    data_qnt: int
    avg_acc_contrib: float
    avg_disconnection_per_round: float
    sensors: tuple[str, ...]

    def to_request(self) -> dict[str, Any]:
        """The body of ``rpc_exec_update_user_info``."""
        return {
            "user_id": self.user_id,
            "data_qnt": self.data_qnt,
            "avg_acc_contrib": self.avg_acc_contrib,
            "avg_disconnection_per_round": self.avg_disconnection_per_round,
            "sensors": list(self.sensors),
        }

    def record(self) -> dict[str, Any]:
        """What a selection criteria expression sees (as the cloud builds it)."""
        return {**self.to_request(), "sensors": sorted(self.sensors)}


def device_attributes(index: int, *, seed: int = 7, prefix: str = "sim") -> DeviceAttributes:
    """The ``index``-th device of a fleet (the same one for the same seed): data_qnt
    uniform in 0..200, each sensor with probability 1/2."""
    rng = random.Random(seed * 1_000_003 + index)
    return DeviceAttributes(
        user_id=f"{prefix}-{index:05d}",
        data_qnt=rng.randint(0, 200),
        avg_acc_contrib=round(rng.random(), 3),
        avg_disconnection_per_round=round(rng.random() * 0.3, 3),
        sensors=tuple(s for s in SENSORS if rng.random() < 0.5),
    )


def fleet_attributes(
    count: int, *, start: int = 0, seed: int = 7, prefix: str = "sim"
) -> list[DeviceAttributes]:
    """Devices ``start`` .. ``start + count - 1`` of a fleet."""
    return [device_attributes(i, seed=seed, prefix=prefix) for i in range(start, start + count)]


def _kind(exc: httpx.HTTPError) -> str:
    """``timeout``, ``connect``, or the error's name (``ReadError``, ``RemoteProtocolError``,
    ``WriteError``: the connection broke)."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    return type(exc).__name__


class DeviceApi:
    """The gateway's device API on one shared client; every request is timed."""

    def __init__(
        self, http: httpx.AsyncClient, stats: FleetStats, rng: random.Random | None = None
    ) -> None:
        self.http = http
        self.stats = stats
        self.shed: Counter[str] = Counter()
        """Busy refusals (503/429 with Retry-After) per operation, each one resent."""
        self._rng = rng or random.Random()

    def _busy_wait(self, response: httpx.Response, backoff: Backoff, since: float) -> float | None:
        """Seconds to wait before resending a request the cloud refused as busy; None
        when ``response`` is no such refusal or the device's patience ran out."""
        wait = retry_after(response)
        if wait is None:
            return None
        delay = backoff.after(wait)
        if time.perf_counter() + delay - since > BUSY_PATIENCE:
            return None
        return delay

    async def post(
        self,
        operation: str,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        *,
        will_retry: bool = False,
    ) -> Any:
        """``POST path`` and return the JSON body; anything but 200 is a failure (a busy
        refusal is resent after its Retry-After).

        ``will_retry``: the caller sends the request again after a failure the agent
        would retry (:func:`sent_again_by_agent`); such a failure counts as a retry, and
        the :class:`RequestFailed` says so (``retried``)."""
        started = self.stats.begin()
        kind: str | None = None
        retried = False
        backoff = Backoff(0.5, 30.0, rng=self._rng)
        try:
            while True:
                try:
                    response = await self.http.post(path, json=body, headers=headers)
                except httpx.HTTPError as exc:
                    kind = _kind(exc)
                    retried = will_retry and sent_again_by_agent(kind)
                    raise RequestFailed(operation, kind, str(exc), retried=retried) from None
                delay = self._busy_wait(response, backoff, started)
                if delay is None:
                    break
                self.shed[operation] += 1
                await asyncio.sleep(delay)
            if response.status_code != 200:
                kind = f"http_{response.status_code}"
                retried = will_retry and sent_again_by_agent(kind)
                raise RequestFailed(operation, kind, response.text[:200], retried=retried)
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                kind = "bad_reply"
                retried = will_retry
                raise RequestFailed(operation, kind, response.text[:200], retried=retried) from None
        finally:
            self.stats.end(operation, started, kind, retried=retried)

    async def download(
        self, path: str, headers: dict[str, str], auth: tuple[str, str] | None
    ) -> tuple[int, str]:
        """``GET path``, streamed and hashed; returns (size, SHA-256 hex)."""
        started = self.stats.begin()
        kind: str | None = None
        digest = hashlib.sha256()
        size = 0
        backoff = Backoff(0.5, 30.0, rng=self._rng)
        try:
            while True:
                async with self.http.stream("GET", path, headers=headers, auth=auth) as response:
                    if response.status_code != 200:
                        await response.aread()
                        delay = self._busy_wait(response, backoff, started)
                        if delay is None:
                            kind = f"http_{response.status_code}"
                            raise RequestFailed("download", kind, response.text[:200])
                    else:
                        async for chunk in response.aiter_bytes():
                            size += len(chunk)
                            digest.update(chunk)
                        break
                self.shed["download"] += 1
                await asyncio.sleep(delay)
        except httpx.HTTPError as exc:
            kind = _kind(exc)
            raise RequestFailed("download", kind, str(exc)) from None
        finally:
            self.stats.end("download", started, kind)
        return size, digest.hexdigest()


@dataclass(frozen=True)
class DeviceConfig:
    poll_interval: float = 10.0
    jitter: float = 0.1
    legacy: bool = False
    enrollment_token: str | None = None
    rounds: int = 2
    round_seconds: float = 0.5
    report_attempts: int = REPORT_ATTEMPTS
    report_backoff: tuple[float, float] = REPORT_BACKOFF


@dataclass
class SimulatedDevice:
    attributes: DeviceAttributes
    api: DeviceApi
    config: DeviceConfig
    rng: random.Random
    credential: str | None = None
    busy: bool = False
    started: bool = False
    reported: bool = False
    polls: int = 0
    completed: dict[str, str] = field(default_factory=dict)  # task_id -> version
    on_board_at: float | None = None
    """``time.perf_counter()`` when its first cycle succeeded: enrolled, reported, and
    every task offered at that poll played to the end."""
    last_ok_at: float | None = None
    """``time.perf_counter()`` when its latest cycle succeeded."""

    @property
    def user_id(self) -> str:
        return self.attributes.user_id

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"} if self.credential else {}

    async def run(self, start_delay: float, stop: asyncio.Event) -> None:
        """Start after ``start_delay`` seconds and poll until ``stop`` is set.

        ``busy`` is True while a cycle runs: whoever stops the fleet cancels idle
        devices at once and lets busy ones finish their cycle (every task offered at
        that poll, as an agent would)."""
        await asyncio.sleep(start_delay)
        self.started = True
        # After a failed cycle the next comes sooner than a poll, like the agent's.
        backoff = Backoff(min(0.5, self.config.poll_interval), self.config.poll_interval)
        while not stop.is_set():
            self.busy = True
            delay: float | None = None
            try:
                await self._cycle()
                self.last_ok_at = time.perf_counter()
                if self.on_board_at is None:
                    self.on_board_at = self.last_ok_at
                backoff.reset()
            except RequestFailed:
                delay = backoff.next()  # counted; try again soon
            except Exception as exc:  # a bug here must show as an error, not end the device
                self.api.stats.error("device", f"crash:{type(exc).__name__}")
                logger.exception("simulated device %s failed", self.user_id)
            finally:
                self.busy = False
            if stop.is_set():
                break
            if delay is None:
                spread = self.config.jitter * self.config.poll_interval
                delay = self.config.poll_interval + self.rng.uniform(-spread, spread)
            await asyncio.sleep(delay)

    async def _cycle(self) -> None:
        if self.credential is None and not self.config.legacy:
            await self._enroll()
        if not self.reported:
            body = self.attributes.to_request()
            await self.api.post("update_user_info", f"/{UPDATE_USER_INFO}", body, self._headers)
            self.reported = True
        offers = await self._requesting_task()
        for offer in offers:
            if self.completed.get(offer.task_id) != offer.version:
                await self._run_task(offer)

    async def _enroll(self) -> None:
        token = self.config.enrollment_token
        if not token:
            raise RequestFailed("enroll", "no_enrollment_token")
        body = {"user_id": self.user_id, "enrollment_token": token}
        value = await self.api.post("enroll", ENROLL_PATH, body, {})
        credential = value.get("credential") if isinstance(value, dict) else None
        if not isinstance(credential, str) or not credential:
            self.api.stats.error("enroll", "bad_reply")
            raise RequestFailed("enroll", "bad_reply")
        self.credential = credential

    async def _requesting_task(self) -> list[TaskOffer]:
        body = {"user_id": self.user_id}
        value = await self.api.post(
            "requesting_task", f"/{CLIENT_REQUESTING_TASK}", body, self._headers
        )
        self.polls += 1
        if not isinstance(value, list):
            self.api.stats.error("requesting_task", "bad_reply")
            raise RequestFailed("requesting_task", "bad_reply")
        offers = []
        for item in value:
            try:
                offers.append(TaskOffer.model_validate(item))
            except ValidationError:
                self.api.stats.error("requesting_task", "bad_offer")
        return offers

    async def _report(self, task_id: str, status: str, **extra: Any) -> None:
        """Deliver one report, sent again as the agent would (see the module's text)."""
        body = {"user_id": self.user_id, "task_id": task_id, "status": status, **extra}
        backoff = Backoff(*self.config.report_backoff, rng=self.rng)
        attempts = max(1, self.config.report_attempts)
        for attempt in range(1, attempts + 1):
            try:
                await self.api.post(
                    "report",
                    f"/{REPORT_DEVICE_TASK}",
                    body,
                    self._headers,
                    will_retry=attempt < attempts,
                )
                return
            except RequestFailed as exc:
                if not exc.retried:
                    raise
            await asyncio.sleep(backoff.next())

    async def _run_task(self, offer: TaskOffer) -> None:
        """Download the bundle (verified) and play a trivial client side."""
        task_id = offer.task_id
        await self._report(task_id, "downloading")
        base = offer.download_url or f"/download/{task_id}/"
        auth = None
        if self.config.legacy and offer.username is not None:
            auth = (offer.username, offer.password or "")
        for listed in offer.files:
            size, sha256 = await self.api.download(base + quote(listed.name), self._headers, auth)
            if size != listed.size or sha256 != listed.sha256:
                self.api.stats.error("download", "bundle_mismatch")
                await self._report(task_id, "failed", reason=f"{listed.name}: checksum mismatch")
                raise RequestFailed("download", "bundle_mismatch", listed.name)
        await self._report(task_id, "running")
        for round_number in range(1, self.config.rounds + 1):
            await asyncio.sleep(self.config.round_seconds)
            acc = round(0.5 + 0.4 * round_number / self.config.rounds * self.rng.random(), 4)
            metrics = {"acc": acc, "loss": round(1.0 - acc, 4)}
            await self._report(task_id, "running", round=round_number, metrics=metrics)
        await self._report(task_id, "finished")
        self.completed[task_id] = offer.version
