"""Admission control: a saturated gateway answers 503 + Retry-After at once, and clients
(the agent's CloudClient, a simulated device) honour it and deliver afterwards."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from cloud_harness import Cloud, running_cloud

from agata.cloud.gateway.admission import Admissions
from agata.cloud.services.task_manager import TaskManager
from agata.edge.cloud_client import CloudClient
from agata.edge.device_info import DeviceInfo
from agata.protocol import operations as ops
from agata.retry import Backoff
from agata.simulate.device import DeviceApi, DeviceConfig, SimulatedDevice, device_attributes
from agata.simulate.stats import FleetStats

#: The device call that holds the gateway's one device place: its service is stopped,
#: so it waits for the bus timeout (a service that cannot keep up, made deterministic).
STALL_SECONDS = 2.0


@asynccontextmanager
async def saturated_cloud(
    tmp_path: Path,
) -> AsyncIterator[tuple[Cloud, asyncio.Task[int], TaskManager]]:
    """A real cloud with one device place and no queue; its task manager is stopped,
    and one device's poll (a device of the original system) holds the place for
    STALL_SECONDS."""
    async with running_cloud(
        tmp_path,
        legacy_devices=True,
        max_in_flight=1,
        admission_wait=0.0,
        rpc_timeout=STALL_SECONDS,
    ) as cloud:
        manager = next(s for s in cloud.node._running if isinstance(s, TaskManager))
        # The operator's token is resolved (and cached) before the task manager stops.
        assert (await cloud.op(ops.LIST_TASKS, {})).status_code == 200
        await manager.stop()

        async def hold() -> int:
            response = await cloud.op(ops.CLIENT_REQUESTING_TASK, {"user_id": "h"}, token=None)
            return response.status_code

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.3)  # it has the place
        assert not holder.done()
        try:
            yield cloud, holder, manager
        finally:
            await holder


async def test_a_saturated_gateway_answers_503_with_retry_after_at_once(tmp_path: Path) -> None:
    # Prepare
    async with saturated_cloud(tmp_path) as (cloud, holder, _manager):
        body = {"user_id": "dev-1", "data_qnt": 10, "sensors": []}
        # Execute
        started = time.perf_counter()
        refused = await cloud.op(ops.UPDATE_USER_INFO, body, token=None)
        elapsed = time.perf_counter() - started
        health = await cloud.http.get("/healthz")
        # Assert: refused at once (not after the 2 s the place is held), with the reason
        assert refused.status_code == 503, refused.text
        assert elapsed < 1.0
        assert int(refused.headers["retry-after"]) >= 1
        assert "busy" in refused.json()["detail"]
        assert health.status_code == 200  # liveness is never refused
        # The call that held the place was accepted and ran to its (bus) timeout.
        assert await holder == 504
        accepted = await cloud.op(ops.UPDATE_USER_INFO, body, token=None)
        assert accepted.status_code == 200, accepted.text


async def test_an_operator_is_served_while_the_devices_places_are_full(tmp_path: Path) -> None:
    # Prepare: the one device place is held, and a device is refused
    async with saturated_cloud(tmp_path) as (cloud, holder, manager):
        body = {"user_id": "dev-1", "data_qnt": 10, "sensors": []}
        assert (await cloud.op(ops.UPDATE_USER_INFO, body, token=None)).status_code == 503
        # Execute: the console reads devices (the device registry is up)
        page = await cloud.op(ops.QUERY_DEVICES, {"limit": 50})
        # Assert: served from the operators' own places, not refused behind the fleet
        assert page.status_code == 200, page.text
        assert not holder.done()
        await holder
        await manager.start()


class _Recorder(httpx.AsyncBaseTransport):
    """The network transport, recording (time, status) of every response."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.seen: list[tuple[float, int, str | None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.seen.append(
            (time.perf_counter(), response.status_code, response.headers.get("retry-after"))
        )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_the_agent_waits_retry_after_then_delivers(tmp_path: Path) -> None:
    # Prepare: a backoff far shorter than Retry-After, to show which one is honoured
    async with saturated_cloud(tmp_path) as (cloud, _holder, _manager):
        recorder = _Recorder()
        client = CloudClient(
            cloud.node.url, attempts=10, backoff=Backoff(0.05, 0.1), transport=recorder
        )
        async with client:
            # Execute
            await client.update_user_info(DeviceInfo("dev-2", data_qnt=5.0))
        # Assert: refused first, each retry at least Retry-After later, then accepted
        statuses = [status for _, status, _ in recorder.seen]
        assert statuses[0] == 503 and statuses[-1] == 200, statuses
        for (t0, status, wait), (t1, _, _) in zip(recorder.seen, recorder.seen[1:], strict=False):
            assert status == 503 and wait is not None
            assert t1 - t0 >= float(wait) - 0.05
        record = await cloud.op(ops.GET_USER_INFO, {"user_id": "dev-2"})
        assert record.status_code == 200 and record.json()["data_qnt"] == 5


async def test_a_simulated_device_waits_retry_after_and_delivers(tmp_path: Path) -> None:
    # Prepare
    async with saturated_cloud(tmp_path) as (cloud, holder, manager):
        stats = FleetStats()
        async with httpx.AsyncClient(base_url=cloud.node.url, timeout=10) as http:
            api = DeviceApi(http, stats, random.Random(1))
            device = SimulatedDevice(
                device_attributes(3, prefix="sim"), api, DeviceConfig(legacy=True), random.Random(2)
            )
            # Execute: its attributes report meets the busy gateway; the task manager is
            # back by the time it asks for tasks
            cycle = asyncio.create_task(device._cycle())
            await holder
            await manager.start()
            await cycle
        # Assert: refused, resent after Retry-After, delivered; no failure counted
        assert api.shed["update_user_info"] >= 1
        assert stats.errors == 0, stats.errors_by_kind()
        assert device.reported and device.polls == 1
        record = await cloud.op(ops.GET_USER_INFO, {"user_id": device.user_id})
        assert record.status_code == 200


async def test_a_rate_limited_simulated_device_waits_retry_after_and_delivers(
    tmp_path: Path,
) -> None:
    # Prepare: one request per second from an address; a cycle makes two at once
    async with running_cloud(tmp_path, legacy_devices=True, rate_limit=1.0, rate_burst=1.0) as c:
        stats = FleetStats()
        async with httpx.AsyncClient(base_url=c.node.url, timeout=10) as http:
            api = DeviceApi(http, stats, random.Random(1))
            device = SimulatedDevice(
                device_attributes(4, prefix="sim"), api, DeviceConfig(legacy=True), random.Random(2)
            )
            # Execute
            started = time.perf_counter()
            await device._cycle()
            elapsed = time.perf_counter() - started
        # Assert: the 429 was waited out (Retry-After: 1 s), not counted as a failure
        assert api.shed["requesting_task"] >= 1
        assert stats.errors == 0, stats.errors_by_kind()
        assert device.polls == 1 and elapsed >= 0.9


# -- the places and the queue, on their own ------------------------------------------


async def test_admissions_queue_hands_places_over_in_order_and_refuses_when_full() -> None:
    admissions = Admissions(1, max_wait=5.0)
    assert await admissions.enter() is None  # the place
    waiters = [asyncio.create_task(admissions.enter()) for _ in range(1)]
    await asyncio.sleep(0)
    assert admissions.waiting == 1
    assert await admissions.enter() == 1  # the queue (as long as the places) is full
    admissions.leave()
    assert await waiters[0] is None
    assert admissions.in_flight == 1 and admissions.waiting == 0
    admissions.leave()
    assert admissions.in_flight == 0


async def test_admissions_refuse_a_wait_that_runs_out() -> None:
    admissions = Admissions(1, max_wait=0.05)
    assert await admissions.enter() is None
    started = time.perf_counter()
    assert await admissions.enter() == 1
    assert time.perf_counter() - started < 1.0
    assert admissions.waiting == 0 and admissions.refused == 1


def test_retry_after_is_the_time_the_measured_rate_takes_for_the_requests_ahead() -> None:
    admissions = Admissions(10, max_wait=1.0, held_target=10.0)
    admissions.in_flight = 10
    for _ in range(10):
        admissions.leave(5.0)  # 10 places each held 5 s: 2 per second
        admissions.in_flight += 1
    assert admissions.rate() == pytest.approx(2.0)
    assert admissions.retry_after() == 5  # 10 ahead at 2/s
    assert [admissions._refuse() for _ in range(3)] == [5, 6, 6]  # and the refused before
    assert admissions.promised() == 3
    admissions.in_flight = 10_000
    assert admissions.retry_after() == 30  # capped


async def test_a_wait_the_rate_says_is_too_long_is_refused_at_once() -> None:
    admissions = Admissions(1, max_wait=1.0)
    assert await admissions.enter() is None
    admissions.held_seconds = 2.0  # one place, 2 s a request: the next waits ~2 s
    started = time.perf_counter()
    assert await admissions.enter() == 2
    assert time.perf_counter() - started < 0.1


async def test_places_shrink_while_requests_take_too_long_and_grow_back() -> None:
    admissions = Admissions(32, max_wait=1.0, held_target=1.0)
    for _ in range(40):  # slow: each held its place 3 s
        admissions.in_flight = 1
        admissions.leave(3.0)
    assert admissions.limit == admissions.min_limit == 2
    admissions.in_flight = 0
    assert await admissions.enter() is None and await admissions.enter() is None
    assert admissions.in_flight == 2
    for _ in range(40):  # fast again
        admissions.leave(0.1)
        admissions.in_flight += 1
    assert admissions.limit == 32


@pytest.mark.parametrize("value", [0, -1.0])
def test_backoff_after_without_a_useful_retry_after_is_the_backoff(value: float) -> None:
    backoff = Backoff(0.2, 1.0, jitter=0.0)
    assert backoff.after(value) == 0.2
    assert backoff.after(None) == 0.4


def test_backoff_after_waits_at_least_retry_after_and_spreads() -> None:
    backoff = Backoff(0.2, 1.0, rng=random.Random(5))
    delays = [backoff.after(2.0) for _ in range(50)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert max(delays) - min(delays) > 1.0  # a refused fleet comes back spread out
