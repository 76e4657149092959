"""``agata bench scaling`` end to end, small: the unit run and the 2x2 check run on the
test RabbitMQ and PostgreSQL, real processes, real counters (about a minute)."""

from __future__ import annotations

import pytest

from agata.bench.scaling_bench import ScalingOptions, run_scaling_bench

pytestmark = [pytest.mark.load, pytest.mark.timeout(240)]


async def test_scaling_bench_measures_fits_and_checks(
    amqp_url: str, pg_url: str, rabbitmqctl: str
) -> None:
    options = ScalingOptions(
        bus_url=amqp_url, db_url=pg_url, rabbitmqctl=rabbitmqctl, devices=40,
        check_devices=40, seconds=8.0, idle_seconds=3.0, poll_interval=2.0,
        report_rate=10.0, streams=10, tasks=1, setup_rate=40.0,
    )  # fmt: skip

    costs, check, sizing = await run_scaling_bench(options)

    figures = {f.name: f for f in costs.figures}
    # A poll is one RPC through the broker: a request and its reply, at least
    assert 1.8 <= (figures["messages per poll"].value or 0) <= 4
    assert (figures["cpu:gateway per poll"].value or 0) > 0
    assert (figures["cpu:task-manager per poll"].value or 0) > 0
    assert figures["unit run: errors"].value == 0
    # each report reaches this process's own subscription (its notifications)
    assert (figures["deliveries per report per subscriber"].value or 0) >= 1
    checked = [f for f in check.figures if f.name.startswith("polls window")]
    assert {f.name for f in checked} >= {"polls window: cpu:gateway", "polls window: messages"}
    # every measured figure has the model's prediction beside it; the costs every poll
    # must have (CPU, messages) are predicted non-zero (a count such as transactions per
    # poll may be predicted 0 when the unit run's caches answered every poll)
    assert all(f.limit is not None and f.limit >= 0 for f in checked)
    predicted = {f.name: f.limit for f in checked}
    assert (predicted["polls window: cpu:gateway"] or 0) > 0
    assert (predicted["polls window: messages"] or 0) > 0
    assert {f.name for f in check.figures if f.name == "check run: errors"}
    assert next(f for f in check.figures if f.name == "check run: errors").value == 0
    assert any(f.name == "gateway replicas" for f in sizing.figures)
