"""The capacity model of ``agata bench scaling`` (docs/scaling.md): pure arithmetic.

A *quantity* is anything counted over a window: the CPU seconds of one kind of process
(``cpu:gateway``, ``cpu:task-manager``, ``cpu:device-registry``, summed over its
replicas; ``cpu:broker``, ``cpu:database``), RabbitMQ's ``messages`` (published into
the broker) and ``deliveries`` (to consumers), PostgreSQL's ``transactions``. Over a
window of ``seconds`` in which the fleet made ``polls`` polls and ``reports`` reports,
with ``r`` processes that the quantity's *fan-out* reaches,

    quantity = idle * r * seconds + per_poll * polls + per_report * reports
               + fanout * reports * r

- ``per_poll``, ``per_report``: the work of serving a request, done once whatever the
  replicas (competing consumers share it);
- ``fanout``: the work every subscriber of the notifications topic does for each
  report (a report broadcasts what changed to every gateway, task manager and device
  registry: each decodes and filters it). For ``cpu:<kind>`` ``r`` is that kind's
  replicas, for ``deliveries`` every subscriber, for the other quantities nothing
  (``r`` = 1, ``fanout`` = 0).

The broker's CPU is modelled from its traffic instead, ``cpu:broker = idle * seconds +
per_message * (messages + deliveries)`` (:attr:`Model.broker_per_message`).

:func:`fit` takes the constants from three windows (idle, polls only, polls and
reports) and the fan-out measured apart; :func:`predict` gives any other window and
replica count; :func:`size_fleet` turns the constants into the replicas a fleet needs.
Nothing here measures: see :mod:`agata.bench.scaling_bench`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "COMPONENTS",
    "Cost",
    "Model",
    "Sizing",
    "WindowCounts",
    "fit",
    "predict",
    "size_fleet",
]

#: Kinds of process whose replicas can be added (each one CPU-bound Python process).
COMPONENTS = ("gateway", "task-manager", "device-registry")
BROKER = "cpu:broker"


@dataclass(frozen=True)
class WindowCounts:
    """What one window measured: its length, the fleet's polls and reports in it, and
    each quantity's total (summed over the replicas of a kind)."""

    seconds: float
    polls: int
    reports: int
    totals: Mapping[str, float]
    replicas: Mapping[str, int] = field(default_factory=dict)
    """Processes of each kind (absent kinds: 1)."""
    subscribers: int = 0
    """Subscribers of the notifications topic (every cloud process, and any other)."""

    def fanout_of(self, quantity: str) -> int:
        """How many processes the fan-out of ``quantity`` reaches (see the module)."""
        if quantity.startswith("cpu:") and quantity.removeprefix("cpu:") in COMPONENTS:
            return self.replicas.get(quantity.removeprefix("cpu:"), 1)
        if quantity == "deliveries":
            return self.subscribers
        return 1


@dataclass(frozen=True)
class Cost:
    """One quantity's constants (see the module's formula)."""

    idle: float
    per_poll: float
    per_report: float
    fanout: float = 0.0


@dataclass(frozen=True)
class Model:
    costs: Mapping[str, Cost]
    broker_idle: float = 0.0
    """Broker CPU seconds per second, idle."""
    broker_per_message: float = 0.0
    """Broker CPU seconds per message received or delivered."""
    rss_per_stream: float | None = None
    """Bytes of gateway memory per open device event stream."""
    gateway_rss: float | None = None
    """Bytes of one gateway with no stream open (after the fleet's polls)."""
    stream_per_report: float | None = None
    """Gateway CPU seconds per report per device stream open on that gateway (its hub
    looks at every notification for every stream)."""
    stream_idle: float | None = None
    """Gateway CPU seconds per second per open device stream (its keep-alive)."""


def _idle(window: WindowCounts, quantity: str) -> float:
    """Per second per process; the broker's and the counters' are per instance."""
    return window.totals.get(quantity, 0.0) / window.seconds / window.fanout_of(quantity)


def fit(
    idle: WindowCounts,
    polls: WindowCounts,
    reports: WindowCounts,
    fanout: Mapping[str, float],
) -> Model:
    """The constants from an ``idle`` window (no requests), a ``polls`` window (polls
    only) and a ``reports`` window (polls and reports), given each quantity's
    ``fanout`` per report and subscriber (measured apart; absent: 0).

    Raises ``ValueError`` when a window lacks what it must measure (no polls in
    ``polls``, no reports in ``reports``, a window without length)."""
    if min(idle.seconds, polls.seconds, reports.seconds) <= 0:
        raise ValueError("every window must last")
    if polls.polls <= 0 or reports.reports <= 0:
        raise ValueError("the polls window needs polls and the reports window reports")
    costs = {}
    for quantity in polls.totals:
        if quantity == BROKER:
            continue
        rate = _idle(idle, quantity)
        spread = fanout.get(quantity, 0.0)
        busy = polls.totals[quantity] - rate * polls.fanout_of(quantity) * polls.seconds
        per_poll = busy / polls.polls
        rest = (
            reports.totals.get(quantity, 0.0)
            - rate * reports.fanout_of(quantity) * reports.seconds
            - per_poll * reports.polls
            - spread * reports.reports * reports.fanout_of(quantity)
        )
        costs[quantity] = Cost(rate, per_poll, rest / reports.reports, spread)
    broker_idle = _idle(idle, BROKER)
    traffic = sum(
        w.totals.get("messages", 0.0) + w.totals.get("deliveries", 0.0) for w in (polls, reports)
    )
    busy = sum(w.totals.get(BROKER, 0.0) - broker_idle * w.seconds for w in (polls, reports))
    return Model(costs, broker_idle, busy / traffic if traffic > 0 else 0.0)


def predict(model: Model, window: WindowCounts) -> dict[str, float]:
    """Each quantity the model knows, for ``window``'s length, traffic and replicas."""
    predicted = {
        quantity: cost.idle * window.fanout_of(quantity) * window.seconds
        + cost.per_poll * window.polls
        + cost.per_report * window.reports
        + cost.fanout * window.reports * window.fanout_of(quantity)
        for quantity, cost in model.costs.items()
    }
    traffic = predicted.get("messages", 0.0) + predicted.get("deliveries", 0.0)
    predicted[BROKER] = model.broker_idle * window.seconds + model.broker_per_message * traffic
    return predicted


@dataclass(frozen=True)
class Sizing:
    """What a fleet needs (:func:`size_fleet`)."""

    devices: int
    polls_per_s: float
    reports_per_s: float
    cores: dict[str, float]
    """CPU cores busy per kind of process (all replicas), the broker and the database."""
    replicas: dict[str, int]
    """Processes of each of :data:`COMPONENTS` at the target utilisation."""
    per_replica: dict[str, float]
    """Cores busy in one replica of each kind."""
    messages_per_s: float
    deliveries_per_s: float
    transactions_per_s: float
    streams_per_gateway: float
    gateway_rss_mb: float | None
    """Memory of one gateway holding its share of the streams (None: not measured)."""
    limit: str = ""
    """When no replica count suffices: the reason (the fan-out alone fills a process)."""


def size_fleet(
    model: Model,
    devices: int,
    *,
    poll_interval: float,
    report_interval: float,
    utilisation: float,
    max_connections: int,
    streams: bool = True,
) -> Sizing:
    """Replicas for ``devices`` polling every ``poll_interval`` s and reporting every
    ``report_interval`` s each, every process of :data:`COMPONENTS` kept at most
    ``utilisation`` of a core busy (the rest is headroom for bursts and tail latency),
    every gateway holding at most ``max_connections`` streams (with ``streams``: every
    device keeps one open, as the agent does).

    One replica of a kind carries ``(shared + streams_cost) / r + fanout + idle``:
    ``shared`` the kind's polls and reports, ``fanout`` the notifications of every
    report (the same in every replica), and for a gateway its streams' share of
    looking at every notification. When ``fanout + idle`` alone reaches
    ``utilisation`` no count suffices: :attr:`Sizing.limit` says so and the replicas
    are those of the connections alone."""
    if not 0 < utilisation <= 1:
        raise ValueError("utilisation is a fraction of a core, in (0, 1]")
    polls_per_s = devices / poll_interval
    reports_per_s = devices / report_interval

    def cost(quantity: str) -> Cost:
        return model.costs.get(quantity, Cost(0.0, 0.0, 0.0))

    cores: dict[str, float] = {}
    replicas: dict[str, int] = {}
    per_replica: dict[str, float] = {}
    limits = []
    for kind in COMPONENTS:
        c = cost(f"cpu:{kind}")
        shared = max(0.0, c.per_poll * polls_per_s + c.per_report * reports_per_s)
        if kind == "gateway" and streams:
            shared += max(0.0, model.stream_per_report or 0.0) * reports_per_s * devices
            shared += max(0.0, model.stream_idle or 0.0) * devices
        fixed = max(0.0, c.idle) + max(0.0, c.fanout) * reports_per_s
        least = math.ceil(devices / max_connections) if kind == "gateway" and streams else 1
        if fixed >= utilisation:
            limits.append(
                f"{kind}: the notifications of {reports_per_s:,.0f} reports/s alone keep "
                f"every replica {fixed:.2f} of a core busy"
            )
            count = least
        else:
            count = max(least, math.ceil(shared / (utilisation - fixed)))
        replicas[kind] = count
        per_replica[kind] = shared / count + fixed
        cores[kind] = per_replica[kind] * count
    processes = sum(replicas.values())
    messages = _traffic(cost("messages"), polls_per_s, reports_per_s, 1)
    deliveries = _traffic(cost("deliveries"), polls_per_s, reports_per_s, processes)
    cores["broker"] = model.broker_idle + model.broker_per_message * (messages + deliveries)
    cores["database"] = _traffic(cost("cpu:database"), polls_per_s, reports_per_s, 1)
    streams_each = devices / replicas["gateway"] if streams else 0.0
    rss = None
    if model.rss_per_stream is not None and model.gateway_rss is not None:
        rss = (model.gateway_rss + model.rss_per_stream * streams_each) / 1e6
    return Sizing(
        devices=devices,
        polls_per_s=polls_per_s,
        reports_per_s=reports_per_s,
        cores=cores,
        replicas=replicas,
        per_replica=per_replica,
        messages_per_s=messages,
        deliveries_per_s=deliveries,
        transactions_per_s=_traffic(cost("transactions"), polls_per_s, reports_per_s, 1),
        streams_per_gateway=streams_each,
        gateway_rss_mb=rss,
        limit="; ".join(limits),
    )


def _traffic(cost: Cost, polls_per_s: float, reports_per_s: float, reached: int) -> float:
    busy = cost.per_poll * polls_per_s + cost.per_report * reports_per_s
    return max(0.0, busy + cost.fanout * reports_per_s * reached + cost.idle)
