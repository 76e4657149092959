"""The bench's verdicts and its bare limits: right relations, real servers that answer."""

from __future__ import annotations

import httpx

from agata.bench.bare import asyncio_round_trips, bare_fastapi, interpreter_start_ms
from agata.bench.report import BenchReport, render


def test_verdicts_are_on_the_ratio_or_the_excess_over_the_limit() -> None:
    report = BenchReport("t")

    fast = report.ratio("fast", 600.0, 1000.0, "req/s", limit_name="bare", at_least=0.5)
    slow = report.ratio("slow", 400.0, 1000.0, "req/s", limit_name="bare", at_least=0.5)
    near = report.excess("near", 55.0, 40.0, "ms", limit_name="start", at_most=20)
    far = report.excess("far", 65.0, 40.0, "ms", limit_name="start", at_most=20)
    shown = report.ratio("shown", 1.0, None, "ms", limit_name="bare", at_least=0.5)
    render([report])

    assert (fast.compared, fast.ok) == (0.6, True)
    assert (slow.compared, slow.ok) == (0.4, False)
    assert (near.compared, near.ok) == (15.0, True)
    assert (far.compared, far.ok) == (25.0, False)
    assert (shown.compared, shown.ok) == (None, None)  # no limit: no verdict, not "ok"


async def test_the_bare_fastapi_endpoint_validates_its_body_and_answers_the_reply() -> None:
    async with (
        bare_fastapi("/ask", b'[{"ID":"t1"}]') as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        answered = await http.post("/ask", json={"user_id": "d1"})
        refused = await http.post("/ask", json={"user": "d1"})

    assert answered.status_code == 200
    assert answered.content == b'[{"ID":"t1"}]'
    assert refused.status_code == 422


async def test_the_bare_loop_and_the_interpreter_start_give_figures() -> None:
    loop = await asyncio_round_trips(300, 4)
    starts = interpreter_start_ms(2)

    assert loop["sequential_rps"] > 0 and loop["concurrent_rps"] > 0
    assert len(starts) == 2 and all(0 < ms < 10_000 for ms in starts)


def test_the_console_bench_prints_pages_beside_get_user_info() -> None:
    from agata.bench.console_bench import PAGES, run_console_bench

    report = run_console_bench(devices=300, samples=5, enrolling=20)

    pages = [f for f in report.figures if f.relation == "ratio"]
    assert len(pages) == len(PAGES)
    assert all(f.limit and f.value and f.compared for f in pages)
    assert "total 300" in pages[0].note  # the whole fleet, unfiltered
    first_load, enrolled = report.figures[-2:]
    assert first_load.name.startswith("console first load while 20 devices enroll")
    assert (enrolled.value, enrolled.ok) == (20, True)  # every device of the burst got in
    assert report.context["enrollments"] == {"ok": 20}


def test_the_runs_bench_prints_run_reads_beside_get_task() -> None:
    from agata.bench.runs_bench import run_runs_bench

    report = run_runs_bench(runs=30, metrics=600, samples=5)

    names = [f.name for f in report.figures]
    assert names[:2] == ["rpc_exec_list_runs p50", "rpc_exec_get_run p50"]
    assert all(f.limit and f.value and f.compared for f in report.figures)
    assert all(f.limit_name == "rpc_exec_get_task_by_id p50" for f in report.figures)
    assert report.context["runs"] == 30
