"""The simulator's own parts, quickly: histogram, connection pool, command line.

Not marked ``load``: these take a few seconds and guard the tools the load tests use.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from agata.cli.bench_cmd import bench_app
from agata.cli.simulate_cmd import simulate
from agata.errors import AgataError
from agata.simulate.device import DeviceApi, DeviceConfig, SimulatedDevice, fleet_attributes
from agata.simulate.fleet import FleetTask, expected_tasks, task_criteria
from agata.simulate.histogram import LatencyHistogram
from agata.simulate.pool import FleetTransport
from agata.simulate.simulator import _while_arriving
from agata.simulate.stats import FleetStats

# -- histogram -------------------------------------------------------------------------


def test_histogram_quantiles_within_one_percent() -> None:
    rng = random.Random(1)
    samples = [rng.lognormvariate(-5, 1) for _ in range(20_000)]
    histogram = LatencyHistogram()
    for s in samples:
        histogram.record(s)

    ordered = sorted(samples)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[int(q * len(ordered)) - 1]
        assert exact <= histogram.quantile(q) <= exact * 1.0101
    assert histogram.count == len(samples)
    assert histogram.maximum == max(samples)


def test_histogram_empty_and_merge() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    assert a.summary_ms()["p99_ms"] is None

    a.record(0.001)
    b.record(0.010)
    b.record(0.0)
    a.merge(b)

    assert a.count == 3
    assert a.quantile(1.0) == pytest.approx(0.010)
    assert a.quantile(0.01) <= 1e-5  # bucket 0: at most 10 µs
    with pytest.raises(ValueError):
        a.quantile(0)


# -- fleet attributes and criteria ------------------------------------------------------


def test_a_window_and_the_run_total_their_requests_alike() -> None:
    """One set of totals (OperationTotals) for a window and for the whole run."""
    stats = FleetStats()
    window = stats.open_window("all")
    for operation, error, retried in [
        ("report", None, False),
        ("report", "timeout", True),
        ("download", "status_503", False),
    ]:
        stats.end(operation, stats.begin(), error, retried=retried)
    stats.error("download", "checksum")
    stats.stop_clock()

    for totals in (stats, window):
        assert totals.requests == 3
        assert (totals.errors, totals.retries) == (2, 1)
        assert totals.errors_by_kind() == {"download:checksum": 1, "download:status_503": 1}
        assert totals.retries_by_kind() == {"report:timeout": 1}
    assert window.to_json()["retries_by_kind"] == stats.to_json()["retries_by_kind"]


async def test_the_stop_waits_for_devices_while_they_keep_coming_on_board() -> None:
    """Devices arriving one by one, 0.1 s apart, are all waited for although together
    they take 0.8 s, longer than the 0.5 s idle bound; one that never arrives is given
    up after the idle bound, and the total bound holds however steady the arrivals."""

    async def arrives_after(seconds: float) -> None:
        await asyncio.sleep(seconds)

    steady = {asyncio.create_task(arrives_after(0.1 * i)) for i in range(1, 9)}
    assert await _while_arriving(steady, idle=0.5, limit=30.0) == set()

    stuck = asyncio.create_task(arrives_after(3600))
    late = {asyncio.create_task(arrives_after(0.1)), stuck}
    started = asyncio.get_running_loop().time()
    assert await _while_arriving(late, idle=0.3, limit=30.0) == {stuck}
    assert asyncio.get_running_loop().time() - started < 2.0

    many = {asyncio.create_task(arrives_after(0.05 * i)) for i in range(1, 100)}
    left = await _while_arriving(many, idle=1.0, limit=0.5)
    assert 0 < len(left) < 99
    for task in (*left, stuck):
        task.cancel()


def test_criteria_split_the_fleet() -> None:
    devices = fleet_attributes(1000)
    tasks = [FleetTask(f"t{i}", task_criteria(i)) for i in range(4)]
    expected_of = expected_tasks(tasks)

    counts = {t.task_id: 0 for t in tasks}
    for device in devices:
        for task_id in expected_of(device):
            counts[task_id] += 1

    assert counts["t0"] == 1000  # no criteria: everyone
    assert 300 < counts["t1"] < 500 and 200 < counts["t2"] < 400 and 100 < counts["t3"] < 300
    assert fleet_attributes(3, start=5) == fleet_attributes(8)[5:]  # a fleet may grow


# -- connection pool -------------------------------------------------------------------


async def _keep_alive_server() -> AsyncIterator[tuple[int, list[int]]]:
    """A minimal HTTP/1.1 server answering ``ok``; counts the connections it accepted."""
    accepted: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(0.01)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], accepted


async def test_pool_reuses_connections_and_bounds_busy_ones() -> None:
    async for port, accepted in _keep_alive_server():
        transport = FleetTransport(max_connections=4, keepalive_expiry=5)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", transport=transport) as c:
            for _ in range(5):
                assert (await c.get("/")).text == "ok"
            assert len(accepted) == 1  # one kept-alive connection, reused

            replies = await asyncio.gather(*(c.get("/") for _ in range(20)))
            assert all(r.text == "ok" for r in replies)
            assert len(accepted) <= 4  # never more than 4 busy at once
            assert transport.pool.in_use == 0
            assert transport.pool.connections == len(accepted)


async def test_pool_drops_expired_connections() -> None:
    async for port, accepted in _keep_alive_server():
        transport = FleetTransport(max_connections=4, keepalive_expiry=0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", transport=transport) as c:
            await c.get("/")
            await asyncio.sleep(0.1)
            await c.get("/")
            assert len(accepted) == 2
            assert transport.pool.connections == 1


# -- the command -----------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(bench_app, name="bench")
    app.command("simulate")(simulate)
    return app


def test_simulate_embedded_json() -> None:
    """`agata simulate --embedded`: a cloud in the process, 30 devices, all served."""
    args = ["simulate", "--devices", "30", "--embedded", "--duration", "4",
            "--poll-interval", "1", "--tasks", "3", "--json"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)

    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True
    assert data["stats"]["errors"] == 0
    assert data["fleet"]["started"] == data["fleet"]["enrolled"] == 30
    assert data["fleet"]["devices_missing_tasks"] == 0
    assert data["stats"]["operations"]["download"]["count"] > 0
    assert data["stats"]["windows"]["steady"]["p99_ms"] is not None


def test_simulate_embedded_legacy_table() -> None:
    """Legacy devices: no enrollment, downloads with the task's username/password."""
    args = ["simulate", "--devices", "10", "--embedded", "--legacy", "--duration", "3",
            "--poll-interval", "1", "--tasks", "2"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)

    assert result.exit_code == 0, result.output
    assert "result: ok" in result.output
    assert "enroll " not in result.output  # no enrollment row


def test_simulate_refuses_unclear_targets() -> None:
    runner = CliRunner()
    assert runner.invoke(_app(), ["simulate", "--devices", "5"]).exit_code == 2
    cloud_only = ["simulate", "--devices", "5", "--cloud-url", "http://127.0.0.1:9"]
    assert runner.invoke(_app(), cloud_only).exit_code == 2
    external_db = [*cloud_only, "--legacy", "--db", "sqlite:///x.db"]
    assert runner.invoke(_app(), external_db).exit_code == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cloud-url", "localhost:8000", "--legacy"], "--cloud-url: the gateway's address"),
        (["--embedded", "--duration", "5"], "must be longer than the ramp"),
        (["--embedded", "--duration", "5", "--ramp", "-1"], "not in the range"),
    ],
)
def test_simulate_refuses_bad_arguments_clearly(args: list[str], message: str) -> None:
    result = CliRunner().invoke(_app(), ["simulate", "--devices", "5", *args])

    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())  # unwrapped


def test_simulate_says_when_the_cloud_cannot_be_reached() -> None:
    """One clear error before any device starts (``agata`` prints it and exits 2)."""
    args = ["simulate", "--devices", "5", "--cloud-url", "http://127.0.0.1:9",
            "--operator-token", "agata_op_x", "--duration", "3", "--ramp", "1"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)

    assert isinstance(result.exception, AgataError)
    assert "cannot reach the cloud at http://127.0.0.1:9" in result.exception.message


def test_bench_load_refuses_bad_steps() -> None:
    for steps in (",", "500,x", "0,500"):
        result = CliRunner().invoke(_app(), ["bench", "load", "--steps", steps])
        assert result.exit_code == 2, steps


def test_bench_load_one_small_step(tmp_path: Path) -> None:
    """`agata bench load` end to end, small: the fleet comes on board (each device plays
    its tasks) before the steady window, which then holds only polls."""
    out = tmp_path / "load.json"
    args = ["bench", "load", "--steps", "30", "--seconds", "5", "--poll-interval", "1",
            "--setup-rate", "30", "--tasks", "2", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(_app(), args)

    assert result.exit_code == 0, result.output
    step = json.loads(out.read_text())["context"]["steps"][0]
    assert step["ok"] is True, step["why_not"]
    assert step["on_board"] == 30 and step["errors"] == 0
    assert list(step["steady_by_operation"]) == ["requesting_task"]


def test_bench_load_is_registered() -> None:
    result = CliRunner().invoke(_app(), ["bench", "load", "--help"])
    assert result.exit_code == 0
    assert "largest fleet" in result.output


# -- reports sent again, as the agent does ----------------------------------------------


@asynccontextmanager
async def _device_cloud(
    report_reply: Callable[[int], Awaitable[tuple[bytes, bytes]]],
) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A tiny HTTP/1.1 cloud on loopback for one legacy device: it registers, is offered
    task t1 (no files), and its reports are answered by ``report_reply(n)`` (n: the
    report's number, from 1) with a status (``200 OK``) and a body. Yields its URL and
    the report bodies it received."""
    reports: list[dict[str, Any]] = []
    offer = json.dumps([{"ID": "t1", "version": "1", "files": []}]).encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                length = next(
                    int(line.split(":", 1)[1])
                    for line in head.split("\r\n")
                    if line.lower().startswith("content-length:")
                )
                body = await reader.readexactly(length)
                path = head.split(" ", 2)[1]
                if path == "/rpc_exec_client_requesting_task":
                    status, reply = b"200 OK", offer
                elif path == "/rpc_exec_report_device_task":
                    reports.append(json.loads(body))
                    status, reply = await report_reply(len(reports))
                else:
                    status, reply = b"200 OK", b"null"
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(reply)).encode() + b"\r\n\r\n" + reply
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, StopIteration):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", reports


async def _play_one_task(url: str, **config: Any) -> tuple[SimulatedDevice, FleetStats]:
    """A legacy simulated device until it completed t1 or 10 s passed."""
    stats = FleetStats()
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(0.3)) as http:
        device = SimulatedDevice(
            fleet_attributes(1)[0],
            DeviceApi(http, stats),
            DeviceConfig(
                poll_interval=0.2,
                legacy=True,
                rounds=1,
                round_seconds=0.01,
                report_backoff=(0.01, 0.05),
                **config,
            ),
            random.Random(1),
        )
        stop = asyncio.Event()
        runner = asyncio.create_task(device.run(0, stop))
        for _ in range(200):
            if device.completed or runner.done():
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(runner, 5)
    return device, stats


async def test_a_report_that_timed_out_and_was_sent_again_is_a_retry_not_an_error() -> None:
    async def reply(n: int) -> tuple[bytes, bytes]:
        if n == 1:
            await asyncio.sleep(1.0)  # past the client's 0.3 s: it times out
        return b"200 OK", b"null"

    async with _device_cloud(reply) as (url, reports):
        device, stats = await _play_one_task(url)

    assert device.completed == {"t1": "1"}
    assert stats.errors == 0, stats.errors_by_kind()
    assert stats.retries_by_kind() == {"report:timeout": 1}
    # The timed-out report was sent again; the task was played once, in order.
    assert [r["status"] for r in reports] == [
        "downloading",
        "downloading",
        "running",
        "running",
        "finished",
    ]
    assert stats.to_json()["operations"]["report"]["retries"] == 1


async def test_a_report_refused_or_failing_to_the_last_attempt_is_an_error() -> None:
    async def refused(n: int) -> tuple[bytes, bytes]:
        return b"400 Bad Request", b'{"detail": "no"}'

    async def unavailable(n: int) -> tuple[bytes, bytes]:
        return b"503 Service Unavailable", b'{"detail": "busy"}'

    async with _device_cloud(refused) as (url, reports):
        device, stats = await _play_one_task(url)
    assert device.completed == {}
    assert stats.errors_by_kind()["report:http_400"] >= 1
    assert stats.retries == 0  # a 400 is not sent again (nor by the agent)

    async with _device_cloud(unavailable) as (url, reports):
        device, stats = await _play_one_task(url, report_attempts=3)
    assert device.completed == {}
    # Each report: 2 attempts sent again, the third one lost (an error).
    assert stats.errors_by_kind()["report:http_503"] >= 1
    lost = stats.errors_by_kind()["report:http_503"]
    assert stats.retries_by_kind()["report:http_503"] == 2 * lost
    assert len(reports) == 3 * lost
