"""Policies: which compatible tasks run (pure functions, no I/O)."""

from __future__ import annotations

import pytest

from agata.edge.cloud_client import TaskOffer
from agata.edge.policy import choose_tasks
from agata.errors import AgataError


def offer(task_id: str, version: int = 1) -> TaskOffer:
    return TaskOffer.model_validate({"ID": task_id, "version": version})


OFFERS = [offer("a"), offer("b"), offer("c"), offer("d")]


def ids(offers: list[TaskOffer]) -> list[str]:
    return [o.task_id for o in offers]


def test_one_runs_the_first_offer() -> None:
    assert ids(choose_tasks("one", OFFERS)) == ["a"]


def test_one_skips_blocked_offers() -> None:
    chosen = choose_tasks("one", OFFERS, blocked=lambda o: o.task_id in {"a", "b"})

    assert ids(chosen) == ["c"]


def test_one_keeps_the_running_task_while_it_is_offered() -> None:
    assert ids(choose_tasks("one", OFFERS, running={"c"})) == ["c"]


def test_one_with_everything_blocked_runs_nothing() -> None:
    assert choose_tasks("one", OFFERS, blocked=lambda o: True) == []


def test_all_runs_every_unblocked_offer_up_to_the_limit() -> None:
    chosen = choose_tasks("all", OFFERS, blocked=lambda o: o.task_id == "b", max_tasks=2)

    assert ids(chosen) == ["a", "c"]


def test_all_keeps_running_tasks_first() -> None:
    chosen = choose_tasks("all", OFFERS, running={"d"}, max_tasks=2)

    assert ids(chosen) == ["d", "a"]


def test_duplicate_offers_count_once() -> None:
    chosen = choose_tasks("all", [offer("a"), offer("a"), offer("b")], max_tasks=4)

    assert ids(chosen) == ["a", "b"]


def test_a_running_task_no_longer_offered_is_not_chosen() -> None:
    assert ids(choose_tasks("all", OFFERS[:1], running={"z"}, max_tasks=4)) == ["a"]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(AgataError, match="unknown policy"):
        choose_tasks("some", OFFERS)  # type: ignore[arg-type]


def test_offer_ids_and_versions_that_are_not_plain_names_are_refused() -> None:
    with pytest.raises(ValueError):
        TaskOffer.model_validate({"ID": "../etc"})
    with pytest.raises(ValueError):
        TaskOffer.model_validate({"ID": "t", "version": "../1"})


def test_offer_arguments_come_from_argv_or_the_string() -> None:
    from_list = TaskOffer.model_validate({"ID": "t", "client_argv": ["--x", "a b"]})
    from_text = TaskOffer.model_validate({"ID": "t", "client_arguments": "--x 'a b'"})

    assert from_list.argv == ["--x", "a b"]
    assert from_text.argv == ["--x", "a b"]
