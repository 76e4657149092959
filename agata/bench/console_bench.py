"""``agata bench console``: the operator console's queries at fleet size.

A real cloud in this process (``memory://``, SQLite in a temporary folder, or the
empty PostgreSQL database given with ``--db``) with ``--devices`` devices (10,000 by
default) written straight into the store in a few transactions (:func:`insert_fleet`:
only the queries are measured; on PostgreSQL the tables are then vacuumed and analyzed,
as autovacuum would soon after such a burst of inserts). An operator client times,
warm, pages of 50 devices through ``rpc_exec_query_devices`` for each sort key with
typical filters, and — the limit, in the same run, through the same gateway and client
— ``rpc_exec_get_user_info`` of one device, in :data:`ROUNDS` interleaved rounds, so a
slower moment of a shared machine weighs on every figure. Target (issue 16): each
page's p50 <= 3x the limit's.

Then the console's first load while ``--enrolling`` devices enroll at once
(``/api/devices/enroll``, all started together): the time until ``/ui/``, its script and
the first page of devices are served, reported without a target.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, text

from agata.bench.report import BenchReport, percentile
from agata.retry import Backoff
from agata.store import sql_schema as schema
from agata.store.sql_store import indexed_attributes
from agata.store.store import Store

#: Issue 16: a page of 50 devices, p50 <= this times rpc_exec_get_user_info's.
TARGET_RATIO = 3.0
#: Rounds of every figure, interleaved (each round ``samples / ROUNDS`` calls).
ROUNDS = 4
SENSORS = ("camera", "microphone", "gps", "accelerometer")
LOCATIONS = ("lab", "field", "office", "home")
#: (sort, order, q) of the pages measured.
PAGES = [
    ("user_id", "asc", ""),
    ("data_qnt", "desc", "online"),
    ("last_seen", "desc", "location=lab"),
    ("avg_acc_contrib", "asc", "sensor:camera data_qnt>50"),
    ("created_at", "asc", 'data_qnt > 100 and "gps" in sensors'),
    ("avg_disconnection_per_round", "desc", 'location == "lab" or "camera" in sensors'),
]


def insert_fleet(store: Store, devices: int, *, seed: int = 7, prefix: str = "sim") -> None:
    """Write ``devices`` varied devices into a SQL store (chunks of 1,000 rows per
    transaction, with the ``device_attributes`` rows upsert_device would write): a
    quarter offline, ids ``<prefix>-00000``, …. The bulk path of benchmarks and tests."""
    engine = store.engine  # type: ignore[attr-defined]
    rng = random.Random(seed)
    now = datetime.now(UTC)
    for start in range(0, devices, 1000):
        rows: list[dict[str, Any]] = []
        sensors: list[dict[str, Any]] = []
        attributes: list[dict[str, Any]] = []
        for i in range(start, min(devices, start + 1000)):
            user_id = f"{prefix}-{i:05d}"
            seen = now - timedelta(seconds=3600 if i % 4 == 3 else rng.uniform(0, 20))
            extra = {"location": LOCATIONS[i % 4], "battery": rng.randint(5, 100)}
            rows.append(
                {
                    "user_id": user_id,
                    "data_qnt": float(rng.randint(0, 200)),
                    "avg_acc_contrib": round(rng.random(), 3),
                    "avg_disconnection_per_round": round(rng.random() / 4, 3),
                    "extra": extra,
                    "credential_hash": None,
                    "last_seen": seen,
                    "created_at": now - timedelta(seconds=devices - i),
                    "revoked_at": None,
                }
            )
            attributes += indexed_attributes(user_id, extra)
            sensors += [{"user_id": user_id, "sensor": s} for s in SENSORS if rng.random() < 0.4]
        with engine.begin() as conn:
            conn.execute(insert(schema.devices), rows)
            conn.execute(insert(schema.device_attributes), attributes)
            if sensors:
                conn.execute(insert(schema.device_sensors), sensors)


async def _timed(http: httpx.AsyncClient, path: str, body: Any, n: int) -> list[float]:
    out = []
    for i in range(n + 5):
        t0 = time.perf_counter()
        response = await http.post(path, json=body)
        elapsed = time.perf_counter() - t0
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
        if i >= 5:  # warm
            out.append(elapsed)
    return out


ENROLL_DEADLINE_S = 180.0
"""How long the burst's devices keep enrolling (as agents do, after each Retry-After)."""


async def _enroll_like_an_agent(
    devices: httpx.AsyncClient, user_id: str, token: str, deadline: float
) -> str:
    """One device's enrollment: sent again after a busy refusal (503/429) once its
    ``Retry-After`` (with the agent's jitter) is over, until ``deadline``; the outcome's
    kind (``ok``, ``http_409``, ``timeout``, ...)."""
    backoff = Backoff(0.5, 30.0)
    body = {"user_id": user_id, "enrollment_token": token}
    while True:
        try:
            response = await devices.post("/api/devices/enroll", json=body)
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if response.status_code == 200:
            return "ok"
        if response.status_code not in (429, 503):
            return f"http_{response.status_code}"
        try:
            retry_after: float | None = float(response.headers.get("Retry-After", ""))
        except ValueError:
            retry_after = None
        delay = backoff.after(retry_after)
        if time.perf_counter() + delay > deadline:
            return f"still_refused_{response.status_code}"
        await asyncio.sleep(delay)


async def _first_load_during_enrollment(
    node: Any, http: httpx.AsyncClient, n: int
) -> tuple[float, dict[str, int], int, str]:
    """Seconds until the console's page, script and first device page are served while
    ``n`` devices enroll at once (each as an agent does: refused ones come back after
    their Retry-After), the enrollments' outcomes by kind, and how many of the console's
    connections were reset before their answer, and when each of its answers came."""
    token = (
        await http.post("/rpc_exec_create_enrollment_token", json={"uses": n, "ttl_seconds": 600})
    ).json()["enrollment_token"]
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=node.url, timeout=120, limits=limits) as devices:
        deadline = time.perf_counter() + ENROLL_DEADLINE_S
        burst = [
            asyncio.create_task(_enroll_like_an_agent(devices, f"enroll-{i:05d}", token, deadline))
            for i in range(n)
        ]
        await asyncio.sleep(0.05)  # the burst is under way
        t0 = time.perf_counter()
        resets = 0
        steps: list[str] = []
        async with httpx.AsyncClient(base_url=node.url, timeout=120, headers=http.headers) as ui:
            query = {"limit": 50, "sort": "user_id"}
            for method, path, body in (
                ("GET", "/ui/", None),
                ("GET", "/ui/js/app.js", None),
                ("POST", "/rpc_exec_query_devices", query),
            ):
                # A browser opens a new connection when one is reset before its answer
                # (the gateway sheds connections of a crowded address); so does this.
                while True:
                    try:
                        (await ui.request(method, path, json=body)).raise_for_status()
                        steps.append(f"{path} at {time.perf_counter() - t0:.1f} s")
                        break
                    except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError):
                        resets += 1
                        if time.perf_counter() > deadline:
                            raise
        elapsed = time.perf_counter() - t0
        outcomes: dict[str, int] = {}
        for kind in await asyncio.gather(*burst):
            outcomes[kind] = outcomes.get(kind, 0) + 1
    outcomes_steps = "; ".join(steps)
    return elapsed, outcomes, resets, outcomes_steps


def _analyze(store: Store) -> None:
    """PostgreSQL: the statistics and visibility map autovacuum would make after a bulk
    insert (its planner costs index-only scans by them). SQLite keeps none by itself."""
    engine = store.engine  # type: ignore[attr-defined]
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("devices", "device_sensors", "device_attributes", "device_tasks"):
            conn.execute(text(f"VACUUM ANALYZE {table}"))


async def _measure(devices: int, samples: int, enrolling: int, db_url: str) -> dict[str, Any]:
    from agata.cloud.cloud_node import CloudNode
    from agata.cloud.credentials.tokens import OPERATOR_PREFIX, hash_token, new_token
    from agata.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="agata-bench-") as tmp:
        flags: dict[str, Any] = {"data_dir": Path(tmp), "bus_url": "memory://", "gateway_port": 0}
        if db_url:
            flags["db_url"] = db_url
        settings = load_settings(flags=flags, environ={})
        node = CloudNode(settings)
        await node.start()
        try:
            token = new_token(OPERATOR_PREFIX)
            await node.async_store.add_operator_token("bench", hash_token(token))
            t0 = time.perf_counter()
            await asyncio.to_thread(insert_fleet, node.store, devices)
            inserted = time.perf_counter() - t0
            await asyncio.to_thread(_analyze, node.store)
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=node.url, timeout=60, headers=headers) as http:
                result: dict[str, Any] = {"insert_seconds": inserted, "pages": {}, "limit": []}
                bodies = {
                    page: {"limit": 50, "sort": page[0], "order": page[1], "q": page[2]}
                    for page in PAGES
                }
                for page, body in bodies.items():
                    total = (await http.post("/rpc_exec_query_devices", json=body)).json()["total"]
                    result["pages"][page] = ([], total)
                per_round = max(1, samples // ROUNDS)
                for _ in range(ROUNDS):
                    result["limit"] += await _timed(
                        http, "/rpc_exec_get_user_info", {"user_id": "sim-00042"}, per_round
                    )
                    for page, body in bodies.items():
                        times = await _timed(http, "/rpc_exec_query_devices", body, per_round)
                        result["pages"][page][0].extend(times)
                if enrolling:
                    first_load, outcomes, resets, steps = await _first_load_during_enrollment(
                        node, http, enrolling
                    )
                    result["first_load"], result["enrollments"] = first_load, outcomes
                    result["console_resets"], result["first_load_steps"] = resets, steps
        finally:
            await node.stop()
    return result


def run_console_bench(
    devices: int = 10_000, samples: int = 50, enrolling: int = 1000, db_url: str = ""
) -> BenchReport:
    """Pages of devices beside rpc_exec_get_user_info, and the first load in a burst."""
    measured = asyncio.run(_measure(devices, samples, enrolling, db_url))
    report = BenchReport(f"operator console, {devices} devices")
    limit = percentile(measured["limit"], 50) * 1000
    backend = db_url.split("@")[-1] if db_url else "sqlite (temporary file)"
    report.context = {
        "store": backend,
        "devices": devices,
        "samples": samples,
        "rounds": ROUNDS,
        "enrolling": enrolling,
    }
    report.context["insert_seconds"] = round(measured["insert_seconds"], 2)
    report.add("rpc_exec_get_user_info p50 (the limit)", limit, "ms")
    for (sort, order, q), (times, total) in measured["pages"].items():
        report.ratio(
            f"page of 50, sort {sort} {order}, q {q!r} p50",
            percentile(times, 50) * 1000,
            limit,
            "ms",
            limit_name="rpc_exec_get_user_info p50",
            at_most=TARGET_RATIO,
            note=f"total {total}, p95 {percentile(times, 95) * 1000:.1f} ms",
        )
    if "first_load" in measured:
        outcomes = measured["enrollments"]
        said = ", ".join(f"{kind} {count}" for kind, count in sorted(outcomes.items()))
        report.context["enrollments"] = outcomes
        report.add(
            f"console first load while {enrolling} devices enroll at once",
            measured["first_load"] * 1000,
            "ms",
            note=(
                f"{measured['first_load_steps']}; {measured['console_resets']}"
                f" of its connections reset and opened again; enrollments: {said}"
            ),
        )
        report.add(
            "devices of the burst enrolled",
            outcomes.get("ok", 0),
            "devices",
            at_least=enrolling,
            note=f"busy refusals sent again after Retry-After, for up to {ENROLL_DEADLINE_S:g} s",
        )
    return report
