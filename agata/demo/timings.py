"""The experiments' timings: steps read from the merged event log, and their statistics.

Every component records events ``{"time", "service", "function", "event", ...}`` (the
original's shape). One run's events, merged and sorted by time, give the durations of
the original's steps. Each step is measured from an event of the component that starts
it to an event of the component that completes it, always with the same clock (every
component of an experiment runs on this machine):

Experiment 1 (one task reaches a device by itself and runs with a second client):

=====  ========================  ========================================================
step   name                      from -> to
=====  ========================  ========================================================
1      register task             operator sends ``rpc_exec_create_task`` -> reply received
2      start task on cloud       operator sends ``rpc_exec_start_server_task`` -> reply
                                 received (the server side is spawned before the reply)
3      update device info        agent sends ``rpc_exec_update_user_info`` -> reply received
4      request task              agent sends ``rpc_exec_client_requesting_task`` -> reply
                                 (the first request whose reply offers the task)
5      download task             agent starts downloading the bundle -> bundle verified
6      start task on device      bundle verified -> client process spawned (the agent's
                                 own overhead)
7      finish                    first side reports "Finished" -> the task is inactive on
                                 both the device and the cloud
-      dispatch latency          the task runs on the cloud AND the agent is up (the
                                 later of the two) -> client process spawned on the device
=====  ========================  ========================================================

Steps 1-4 are round trips as the caller sees them (the original measured from the
caller's start to the callee's own event, without the way back): ours are the stricter
figures. Experiment 2 (task E fails on the device, which switches to task C):

=====  ========================  ========================================================
1      start task E              E's bundle verified -> E's client spawned
2      bug happens               E's client spawned -> its error seen by the agent
3      handle error              error seen -> download of C starts
4      request new task          first request started after the error -> its reply
5      download new task         download of C starts -> C's bundle verified
6      start new task            C's bundle verified -> C's client spawned
-      failover                  error of E seen -> C's client spawned
=====  ========================  ========================================================

A duration that cannot be found in a run's events is ``None`` ("Not found", as the
original wrote it). Summaries over runs are mean ± half-width of the 95% confidence
interval of the mean with Student's t distribution, like the original's
``exp_stats.py`` (``sem * t.ppf(0.975, n - 1)``), without needing scipy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Event = Mapping[str, Any]

OPERATOR = "operator"
AGENT = "edge agent"
TASK_MANAGER = "task-manager"
SECOND_CLIENT = "second client"


@dataclass(frozen=True)
class Step:
    key: str
    name: str
    raw_label: str  # the original's line in exp*_raw_times


EXP1_STEPS: tuple[Step, ...] = (
    Step("register", "register task", "1) Time for registering a task"),
    Step("start_cloud", "start task on cloud", "2) Time for starting a task at cloud"),
    Step("update_device", "update device info", "3) Time for updating client info"),
    Step("request", "request task", "4) Time for requesting a task"),
    Step("download", "download task", "5) Time for downloading a task"),
    Step("start_device", "start task on device", "6) Time for starting a task at client"),
    Step("finish", "finish", "7) Time for finishing a task at client"),
)
EXP1_EXTRA: tuple[Step, ...] = (
    Step("dispatch", "dispatch latency", "Time for dispatching a task"),
)

EXP2_STEPS: tuple[Step, ...] = (
    Step("start_e", "start task E", "Time for starting a task"),
    Step("bug", "bug happens", "Time for a bug to happen"),
    Step("handle_error", "handle error", "Time for handling error"),
    Step("request_new", "request new task", "Time for requesting a new task"),
    Step("download_new", "download new task", "Time for downloading a new task"),
    Step("start_new", "start new task", "Time for starting the new task"),
)
EXP2_EXTRA: tuple[Step, ...] = (Step("failover", "failover", "Time for failover"),)

RAW_SEPARATOR = "---- RESULTS ----"


# -- finding events ------------------------------------------------------------------


def merge_events(*sources: Iterable[Event]) -> list[dict[str, Any]]:
    """All events of all components in one list, in time order (stable for ties)."""
    merged = [dict(event) for source in sources for event in source]
    merged.sort(key=lambda event: float(event.get("time") or 0.0))
    return merged


Predicate = Callable[[Event], bool]


def where(
    service: str | None = None,
    function: str | None = None,
    event: str | None = None,
    **fields: Any,
) -> Predicate:
    """A predicate matching events by service, function, event text and other fields."""

    def matches(candidate: Event) -> bool:
        if service is not None and candidate.get("service") != service:
            return False
        if function is not None and candidate.get("function") != function:
            return False
        if event is not None and candidate.get("event") != event:
            return False
        return all(candidate.get(key) == value for key, value in fields.items())

    return matches


def first(
    events: Sequence[Event], predicate: Predicate, after: float | None = None
) -> Event | None:
    """The first event matching ``predicate`` (at or after time ``after``)."""
    for candidate in events:
        if after is not None and float(candidate["time"]) < after:
            continue
        if predicate(candidate):
            return candidate
    return None


def last(events: Sequence[Event], predicate: Predicate) -> Event | None:
    for candidate in reversed(events):
        if predicate(candidate):
            return candidate
    return None


def _time(event: Event | None) -> float | None:
    return None if event is None else float(event["time"])


Span = tuple[float, float]
"""A step's (start, end), epoch seconds."""


def _span(start: float | None, end: float | None) -> Span | None:
    if start is None or end is None or end < start:
        return None
    return (start, end)


def _round_trip(
    events: Sequence[Event],
    service: str,
    function: str,
    *,
    end_ok: Predicate | None = None,
    after: float | None = None,
) -> Span | None:
    """From a ``start`` event of ``function`` to the next ``end`` of it (the first pair
    whose end satisfies ``end_ok``)."""
    cursor = after
    while True:
        start = first(events, where(service, function, "start"), after=cursor)
        if start is None:
            return None
        t0 = float(start["time"])
        end = first(events, where(service, function, "end"), after=t0)
        if end is None:
            return None
        if end_ok is None or end_ok(end):
            return (t0, float(end["time"]))
        cursor = math.nextafter(float(end["time"]), math.inf)


def durations_of(spans: Mapping[str, Span | None]) -> dict[str, float | None]:
    """Each step's duration in seconds (None where the step was not found)."""
    return {key: None if span is None else span[1] - span[0] for key, span in spans.items()}


def _offers(task_id: str) -> Predicate:
    def ok(event: Event) -> bool:
        return task_id in (event.get("tasks") or ())

    return ok


# -- experiment 1 --------------------------------------------------------------------


def _finished_on_cloud(task_id: str) -> Predicate:
    def ok(event: Event) -> bool:
        return (
            event.get("service") == TASK_MANAGER
            and event.get("task_id") == task_id
            and (
                (event.get("function") == "task_info" and "Finished" in str(event.get("event")))
                or event.get("function") == "task_ended"
            )
        )

    return ok


def exp1_durations(events: Sequence[Event], task_id: str) -> dict[str, float | None]:
    """The seven steps and the dispatch latency of one experiment-1 run, in seconds."""
    return durations_of(exp1_spans(events, task_id))


def exp1_spans(events: Sequence[Event], task_id: str) -> dict[str, Span | None]:
    """When each step of :func:`exp1_durations` began and ended."""
    downloaded = first(events, where(AGENT, "download task", "end", task_id=task_id))
    spawned = first(events, where(AGENT, "start task on device", "end", task_id=task_id))
    # Step 7: from the first "Finished" of either side to the task being inactive on both.
    finished_device = first(events, where(AGENT, "task finished", "end", task_id=task_id))
    server_finished = first(events, _finished_on_cloud(task_id))
    ended_cloud = first(events, where(TASK_MANAGER, "task_ended", task_id=task_id))
    firsts = [t for t in (_time(finished_device), _time(server_finished)) if t is not None]
    finish: Span | None = None
    if firsts and finished_device is not None and ended_cloud is not None:
        finish = _span(min(firsts), max(_time(finished_device) or 0, _time(ended_cloud) or 0))
    running_on_cloud = first(events, where(OPERATOR, "start task", "end", task_id=task_id))
    agent_up = first(events, where(service=AGENT))
    dispatch: Span | None = None
    if running_on_cloud is not None and agent_up is not None:
        dispatch = _span(
            max(float(running_on_cloud["time"]), float(agent_up["time"])), _time(spawned)
        )
    return {
        "register": _round_trip(events, OPERATOR, "register task"),
        "start_cloud": _round_trip(events, OPERATOR, "start task"),
        "update_device": _round_trip(events, AGENT, "update device info"),
        "request": _round_trip(events, AGENT, "request task", end_ok=_offers(task_id)),
        "download": _span(
            _time(first(events, where(AGENT, "download task", "start", task_id=task_id))),
            _time(downloaded),
        ),
        "start_device": _span(_time(downloaded), _time(spawned)),
        "finish": finish,
        "dispatch": dispatch,
    }


# -- experiment 2 --------------------------------------------------------------------


def exp2_durations(
    events: Sequence[Event], failing_id: str, correct_id: str
) -> dict[str, float | None]:
    """The original's experiment-2 steps and the failover time, in seconds."""
    return durations_of(exp2_spans(events, failing_id, correct_id))


def exp2_spans(events: Sequence[Event], failing_id: str, correct_id: str) -> dict[str, Span | None]:
    """When each step of :func:`exp2_durations` began and ended."""
    e_downloaded = first(events, where(AGENT, "download task", "end", task_id=failing_id))
    e_spawned = first(events, where(AGENT, "start task on device", "end", task_id=failing_id))
    e_failed = first(events, where(AGENT, "task failed", "end", task_id=failing_id))
    failed_at = _time(e_failed)
    c_download = first(
        events, where(AGENT, "download task", "start", task_id=correct_id), after=failed_at
    )
    c_downloaded = first(
        events, where(AGENT, "download task", "end", task_id=correct_id), after=failed_at
    )
    c_spawned = first(
        events, where(AGENT, "start task on device", "end", task_id=correct_id), after=failed_at
    )
    request_new = (
        None if failed_at is None else _round_trip(events, AGENT, "request task", after=failed_at)
    )
    return {
        "start_e": _span(_time(e_downloaded), _time(e_spawned)),
        "bug": _span(_time(e_spawned), failed_at),
        "handle_error": _span(failed_at, _time(c_download)),
        "request_new": request_new,
        "download_new": _span(_time(c_download), _time(c_downloaded)),
        "start_new": _span(_time(c_downloaded), _time(c_spawned)),
        "failover": _span(failed_at, _time(c_spawned)),
    }


def switched(events: Sequence[Event], failing_id: str, correct_id: str) -> bool:
    """Whether the device failed on E and then started C by itself."""
    failed = first(events, where(AGENT, "task failed", "end", task_id=failing_id))
    if failed is None:
        return False
    started = first(
        events,
        where(AGENT, "start task on device", "end", task_id=correct_id),
        after=float(failed["time"]),
    )
    return started is not None


# -- raw times (the original's files) ------------------------------------------------


def raw_times_block(steps: Sequence[Step], durations: Mapping[str, float | None]) -> str:
    """One run in the original's ``exp*_raw_times`` format (its ``exp_stats.py`` reads it).

    A ``---- RESULTS ----`` line, then one ``<label> = <seconds> seconds`` line per step
    (``Not found seconds`` when the step is missing from the run's events).
    """
    lines = [RAW_SEPARATOR]
    for step in steps:
        value = durations.get(step.key)
        lines.append(f"{step.raw_label} = {'Not found' if value is None else repr(value)} seconds")
    return "\n".join(lines) + "\n"


def raw_times_row(run: int, steps: Sequence[Step], durations: Mapping[str, float | None]) -> str:
    """One run as one tab-separated line: run number, then each step in seconds (``NA``)."""
    values = [("NA" if durations.get(s.key) is None else f"{durations[s.key]:.6f}") for s in steps]
    return "\t".join([str(run), *values]) + "\n"


def raw_times_header(steps: Sequence[Step]) -> str:
    return "\t".join(["run", *(s.key for s in steps)]) + "\n"


def parse_raw_times(text: str) -> dict[str, list[float]]:
    """Samples per label from an ``exp*_raw_times`` file (as the original's stats script)."""
    samples: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line.strip() or line.strip() == RAW_SEPARATOR or " = " not in line:
            continue
        label, _, rest = line.partition(" = ")
        try:
            value = float(rest.split(" ")[0])
        except ValueError:
            continue  # "Not found"
        samples.setdefault(label, []).append(value)
    return samples


# -- statistics ----------------------------------------------------------------------

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, to 3 decimals (standard tables).
_T975: dict[int, float] = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
    16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074,
    23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045,
    30: 2.042, 40: 2.021, 50: 2.009, 60: 2.000, 80: 1.990, 100: 1.984, 120: 1.980,
}  # fmt: skip
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """``t.ppf(0.975, df)``: exact table values up to 30 degrees of freedom, then linear
    interpolation in ``1/df`` between table rows (error < 0.001), the normal beyond 120."""
    if df < 1:
        raise ValueError("degrees of freedom must be >= 1")
    if df in _T975:
        return _T975[df]
    rows = sorted(_T975)
    if df > rows[-1]:
        lo_df, lo_t, hi_inv, hi_t = rows[-1], _T975[rows[-1]], 0.0, _Z975
        lo_inv = 1.0 / lo_df
    else:
        lo_df = max(r for r in rows if r < df)
        hi_df = min(r for r in rows if r > df)
        lo_inv, lo_t, hi_inv, hi_t = 1.0 / lo_df, _T975[lo_df], 1.0 / hi_df, _T975[hi_df]
    inv = 1.0 / df
    return hi_t + (lo_t - hi_t) * (inv - hi_inv) / (lo_inv - hi_inv)


@dataclass(frozen=True)
class Summary:
    """Mean ± half-width of the 95% confidence interval (None with fewer than 2 samples)."""

    n: int
    mean: float | None
    ci95: float | None
    median: float | None
    minimum: float | None
    maximum: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean": self.mean,
            "ci95": self.ci95,
            "median": self.median,
            "min": self.minimum,
            "max": self.maximum,
        }


def mean_ci95(samples: Sequence[float]) -> Summary:
    """Mean and the half-width of its 95% confidence interval (t distribution)."""
    values = [float(v) for v in samples if v is not None and math.isfinite(float(v))]
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None, None, None)
    mean = statistics.fmean(values)
    ci = None
    if n >= 2:
        sem = statistics.stdev(values) / math.sqrt(n)
        ci = sem * t_quantile_975(n - 1)
    return Summary(n, mean, ci, statistics.median(values), min(values), max(values))


def summarize(
    steps: Sequence[Step], runs: Sequence[Mapping[str, float | None]]
) -> dict[str, Summary]:
    """Per step, the summary over runs (runs where the step is missing are left out)."""
    return {
        step.key: mean_ci95([r[step.key] for r in runs if r.get(step.key) is not None])  # type: ignore[misc]
        for step in steps
    }


def format_seconds(value: float | None) -> str:
    """``12.3 ms`` below a second, ``4.56 s`` above; ``n/a`` for None."""
    if value is None:
        return "n/a"
    if abs(value) < 1.0:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def format_summary(summary: Summary) -> str:
    if summary.mean is None:
        return "n/a"
    if summary.ci95 is None:
        return format_seconds(summary.mean)
    if abs(summary.mean) < 1.0:
        return f"{summary.mean * 1000:.1f} ± {summary.ci95 * 1000:.1f} ms"
    return f"{summary.mean:.2f} ± {summary.ci95:.2f} s"
