"""The capacity model's arithmetic (agata/bench/scaling_model.py): constants recovered
from windows made by known constants, predictions with other replica counts, and the
sizing of a fleet."""

from __future__ import annotations

import math

import pytest

from agata.bench.scaling_model import Cost, Model, WindowCounts, fit, predict, size_fleet

#: Known constants: (idle CPU s per s per replica, per poll, per report, fan-out).
TRUE = {
    "cpu:gateway": Cost(0.002, 0.0030, 0.0040, 0.0002),
    "cpu:task-manager": Cost(0.001, 0.0020, 0.0010, 0.0002),
    "cpu:device-registry": Cost(0.001, 0.0, 0.0050, 0.0002),
    "messages": Cost(0.0, 2.0, 4.0),
    "deliveries": Cost(0.0, 2.0, 2.0, 2.0),
}
FANOUT = {q: c.fanout for q, c in TRUE.items()}
TRUE_MODEL = Model(TRUE, broker_idle=0.01, broker_per_message=0.0001)
UNIT = {"gateway": 2}


def _window(seconds: float, polls: int, reports: int, replicas: dict[str, int]) -> WindowCounts:
    subscribers = sum(replicas.get(k, 1) for k in ("gateway", "task-manager", "device-registry"))
    base = WindowCounts(seconds, polls, reports, {}, replicas, subscribers + 1)
    totals = predict(TRUE_MODEL, base)
    return WindowCounts(seconds, polls, reports, totals, replicas, subscribers + 1)


def test_fit_recovers_the_constants_of_the_windows() -> None:
    # Prepare: three windows of the unit run (two gateways), made by known constants
    idle = _window(10.0, 0, 0, UNIT)
    polls = _window(30.0, 900, 0, UNIT)
    reports = _window(30.0, 880, 600, UNIT)

    # Execute
    model = fit(idle, polls, reports, FANOUT)

    # Assert
    for quantity, cost in TRUE.items():
        got = model.costs[quantity]
        assert got.idle == pytest.approx(cost.idle, abs=1e-12)
        assert got.per_poll == pytest.approx(cost.per_poll, abs=1e-12)
        assert got.per_report == pytest.approx(cost.per_report, abs=1e-12)
        assert got.fanout == cost.fanout
    assert model.broker_idle == pytest.approx(0.01)
    assert model.broker_per_message == pytest.approx(0.0001)


def test_predict_gives_every_replica_its_idle_and_fanout_share() -> None:
    one = WindowCounts(20.0, 100, 50, {}, {"gateway": 1}, 4)
    two = WindowCounts(20.0, 100, 50, {}, {"gateway": 2}, 5)

    gateway = predict(TRUE_MODEL, two)["cpu:gateway"] - predict(TRUE_MODEL, one)["cpu:gateway"]
    deliveries = predict(TRUE_MODEL, two)["deliveries"] - predict(TRUE_MODEL, one)["deliveries"]

    assert gateway == pytest.approx(0.002 * 20.0 + 0.0002 * 50)
    assert deliveries == pytest.approx(2.0 * 50)  # one more subscriber: 2 per report
    assert predict(TRUE_MODEL, two)["messages"] == pytest.approx(100 * 2.0 + 50 * 4.0)


def test_fit_refuses_windows_without_what_they_measure() -> None:
    idle = _window(10.0, 0, 0, {})
    with pytest.raises(ValueError, match="polls window needs polls"):
        fit(idle, _window(30.0, 0, 0, {}), _window(30.0, 10, 10, {}), FANOUT)
    with pytest.raises(ValueError, match="must last"):
        fit(_window(0.0, 0, 0, {}), _window(30.0, 10, 0, {}), _window(30.0, 10, 10, {}), {})


def test_size_fleet_replicas_cover_the_load_at_the_utilisation() -> None:
    # Prepare: 100,000 devices, a poll every 10 s, a report every 60 s, streams
    model = Model(TRUE, 0.01, 0.0001, 20_000.0, 80e6, 1e-8)

    # Execute
    sizing = size_fleet(
        model,
        100_000,
        poll_interval=10.0,
        report_interval=60.0,
        utilisation=0.5,
        max_connections=10_000,
    )

    # Assert: a gateway replica carries its share of the polls, reports and streams,
    # plus every report's notifications
    polls, reports = 10_000.0, 100_000 / 60.0
    shared = polls * 0.003 + reports * 0.004 + 1e-8 * reports * 100_000
    fixed = 0.002 + 0.0002 * reports
    assert sizing.polls_per_s == pytest.approx(polls)
    assert sizing.replicas["gateway"] == math.ceil(shared / (0.5 - fixed))
    assert sizing.per_replica["gateway"] <= 0.5
    assert sizing.cores["gateway"] == pytest.approx(shared + fixed * sizing.replicas["gateway"])
    processes = sum(sizing.replicas.values())
    assert sizing.deliveries_per_s == pytest.approx(
        polls * 2 + reports * 2 + reports * 2 * processes
    )
    assert sizing.messages_per_s == pytest.approx(polls * 2 + reports * 4)
    traffic = sizing.messages_per_s + sizing.deliveries_per_s
    assert sizing.cores["broker"] == pytest.approx(0.01 + 0.0001 * traffic)
    streams = 100_000 / sizing.replicas["gateway"]
    assert sizing.gateway_rss_mb == pytest.approx((80e6 + 20_000 * streams) / 1e6)
    assert sizing.limit == ""


def test_size_fleet_needs_enough_gateways_for_the_connections() -> None:
    cheap = Model({"cpu:gateway": Cost(0.0, 1e-9, 0.0)})

    sizing = size_fleet(
        cheap,
        100_000,
        poll_interval=10.0,
        report_interval=60.0,
        utilisation=0.5,
        max_connections=10_000,
    )

    assert sizing.replicas["gateway"] == 10  # each agent holds its stream's connection
    assert sizing.replicas["task-manager"] == 1


def test_size_fleet_says_when_the_fanout_alone_fills_a_replica() -> None:
    # 1,667 reports/s x 0.4 ms of notifications each = 0.67 of a core in every replica
    costly = Model({"cpu:task-manager": Cost(0.0, 0.001, 0.001, 0.0004)})

    sizing = size_fleet(
        costly,
        100_000,
        poll_interval=10.0,
        report_interval=60.0,
        utilisation=0.5,
        max_connections=10_000,
    )

    assert "task-manager: the notifications of 1,667 reports/s" in sizing.limit
