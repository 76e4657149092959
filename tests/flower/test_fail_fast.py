"""The fail-fast rules of a flower-app run, on the node lists they are shown."""

from __future__ import annotations

from agata.flower.app_bundle import RunOptions
from agata.flower.fail_fast import NodeWatch
from agata.flower.flwr_cli import NodeStatus

A, B = "111", "222"


def nodes(**status: str) -> list[NodeStatus]:
    return [NodeStatus(node_id, state) for node_id, state in status.items()]


def watch(**options: float) -> NodeWatch:
    rules = RunOptions(min_nodes=2, join_seconds=60, lost_nodes=0, lost_seconds=10)
    for key, value in options.items():
        rules = RunOptions(**{**rules.__dict__, key: value})
    return NodeWatch(rules, started=0.0, names={A: "dev-a", B: "dev-b"})


def test_too_few_nodes_past_the_join_deadline_fail_naming_the_missing_devices() -> None:
    rules = watch()

    assert rules.check(nodes(**{A: "online", B: "registered"}), now=59) is None
    reason = rules.check(nodes(**{A: "online", B: "registered"}), now=61)

    assert reason == (
        "only 1 of the 2 nodes needed joined within 60 s; not connected: device dev-b"
    )


def test_a_node_lost_mid_run_fails_after_lost_seconds_naming_it() -> None:
    rules = watch()
    assert rules.check(nodes(**{A: "online", B: "online"}), now=5) is None

    assert rules.check(nodes(**{A: "online", B: "offline"}), now=6) is None
    reason = rules.check(nodes(**{A: "online", B: "offline"}), now=16)

    assert reason is not None
    assert "lost 1 node(s) mid-run, more than the 0 tolerated" in reason
    assert reason.endswith("device dev-b")


def test_a_node_back_in_time_or_within_the_tolerance_lets_the_run_go_on() -> None:
    brief = watch()
    brief.check(nodes(**{A: "online", B: "online"}), now=1)
    brief.check(nodes(**{A: "online", B: "offline"}), now=2)
    assert brief.check(nodes(**{A: "online", B: "online"}), now=11) is None
    assert brief.check(nodes(**{A: "online", B: "offline"}), now=12) is None  # away anew

    tolerant = watch(lost_nodes=1)
    tolerant.check(nodes(**{A: "online", B: "online"}), now=1)
    assert tolerant.check(nodes(**{A: "online", B: "offline"}), now=30) is None
    assert tolerant.check(nodes(**{A: "offline", B: "offline"}), now=45) is None
    assert tolerant.check(nodes(**{A: "offline", B: "offline"}), now=56) is not None


def test_a_node_unknown_to_agata_is_named_by_its_node_id() -> None:
    rules = NodeWatch(RunOptions(min_nodes=1, join_seconds=5), started=0.0)

    reason = rules.check(nodes(**{"999": "registered"}), now=6)

    assert reason is not None
    assert reason.endswith("not connected: node 999")
