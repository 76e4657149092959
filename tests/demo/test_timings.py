"""The timings of the experiments: statistics, raw-times files, steps read from events."""

from __future__ import annotations

import math

import pytest

from agata.demo.timings import (
    AGENT,
    EXP1_STEPS,
    OPERATOR,
    TASK_MANAGER,
    exp1_durations,
    exp2_durations,
    mean_ci95,
    merge_events,
    parse_raw_times,
    raw_times_block,
    switched,
    t_quantile_975,
)


def test_ci95_matches_the_t_distribution() -> None:
    # Prepare: mean 3, sample sd sqrt(2.5), sem sqrt(0.5); t(0.975, 4) = 2.776445
    samples = [1.0, 2.0, 3.0, 4.0, 5.0]

    # Execute
    summary = mean_ci95(samples)

    # Assert
    assert summary.n == 5
    assert summary.mean == pytest.approx(3.0)
    assert summary.ci95 == pytest.approx(math.sqrt(0.5) * 2.776445, rel=1e-3)
    assert summary.median == 3.0


@pytest.mark.parametrize(
    ("df", "expected"),
    # scipy.stats.t.ppf(0.975, df)
    [(1, 12.7062), (2, 4.3027), (9, 2.2622), (30, 2.0423), (35, 2.0301), (45, 2.0141),
     (70, 1.9944), (150, 1.9759), (1000, 1.9623), (10**6, 1.9600)],
)  # fmt: skip
def test_t_quantiles_without_scipy(df: int, expected: float) -> None:
    assert t_quantile_975(df) == pytest.approx(expected, abs=1.5e-3)


def test_ci95_of_too_few_samples() -> None:
    assert mean_ci95([]).mean is None
    one = mean_ci95([0.25])
    assert one.mean == 0.25 and one.ci95 is None


def test_raw_times_in_the_original_format_read_back() -> None:
    # Prepare: two runs, the second missing a step ("Not found", as the original wrote)
    runs = [
        {s.key: 0.01 * (i + 1) for i, s in enumerate(EXP1_STEPS)},
        {**{s.key: 0.02 * (i + 1) for i, s in enumerate(EXP1_STEPS)}, "finish": None},
    ]

    # Execute
    text = "".join(raw_times_block(EXP1_STEPS, run) for run in runs)
    samples = parse_raw_times(text)

    # Assert
    assert text.startswith("---- RESULTS ----\n1) Time for registering a task = 0.01 seconds\n")
    assert "7) Time for finishing a task at client = Not found seconds" in text
    assert samples["1) Time for registering a task"] == [0.01, 0.02]
    assert samples["7) Time for finishing a task at client"] == [0.07]


def _event(t: float, service: str, function: str, event: str, **fields: object) -> dict:
    return {"time": t, "service": service, "function": function, "event": event, **fields}


def test_exp1_steps_from_merged_events() -> None:
    # Prepare: the operator's, the cloud's and the agent's events, out of order
    cloud = [
        _event(10.0040, TASK_MANAGER, "rpc_exec_create_task", "Task registered", task_id="T"),
        _event(15.0, TASK_MANAGER, "task_info", "task T reported Finished", task_id="T"),
        _event(15.3, TASK_MANAGER, "task_ended", "task T finished: ...", task_id="T"),
    ]
    operator = [
        _event(10.000, OPERATOR, "register task", "start", task_id="T"),
        _event(10.005, OPERATOR, "register task", "end", task_id="T"),
        _event(10.100, OPERATOR, "start task", "start", task_id="T"),
        _event(10.120, OPERATOR, "start task", "end", task_id="T"),
    ]
    agent = [
        _event(11.000, AGENT, "update device info", "start"),
        _event(11.003, AGENT, "update device info", "end"),
        _event(11.004, AGENT, "request task", "start"),
        _event(11.008, AGENT, "request task", "end", tasks=["T"]),
        _event(11.009, AGENT, "download task", "start", task_id="T"),
        _event(11.020, AGENT, "download task", "end", task_id="T"),
        _event(11.021, AGENT, "start task on device", "start", task_id="T"),
        _event(11.026, AGENT, "start task on device", "end", task_id="T"),
        _event(15.1, AGENT, "task finished", "end", task_id="T"),
    ]

    # Execute
    steps = exp1_durations(merge_events(agent, cloud, operator), "T")

    # Assert
    assert steps["register"] == pytest.approx(0.005)
    assert steps["start_cloud"] == pytest.approx(0.020)
    assert steps["update_device"] == pytest.approx(0.003)
    assert steps["request"] == pytest.approx(0.004)
    assert steps["download"] == pytest.approx(0.011)
    assert steps["start_device"] == pytest.approx(0.006)
    assert steps["finish"] == pytest.approx(0.3)  # first Finished -> inactive on both
    assert steps["dispatch"] == pytest.approx(0.026)  # agent up (later) -> spawned


def test_exp2_switch_from_events() -> None:
    events = merge_events([
        _event(1.00, AGENT, "download task", "end", task_id="E"),
        _event(1.01, AGENT, "start task on device", "end", task_id="E"),
        _event(1.50, AGENT, "task failed", "end", task_id="E"),
        _event(1.51, AGENT, "download task", "start", task_id="C"),
        _event(1.53, AGENT, "download task", "end", task_id="C"),
        _event(1.54, AGENT, "start task on device", "end", task_id="C"),
        _event(1.55, AGENT, "request task", "start"),
        _event(1.56, AGENT, "request task", "end", tasks=["E", "C"]),
    ])  # fmt: skip

    steps = exp2_durations(events, "E", "C")

    assert switched(events, "E", "C") and not switched(events, "C", "E")
    assert steps["bug"] == pytest.approx(0.49)
    assert steps["failover"] == pytest.approx(0.04)
    assert steps["download_new"] == pytest.approx(0.02)
    assert steps["request_new"] == pytest.approx(0.01)
