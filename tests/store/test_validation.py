"""The store's checks of enum values: one rule (validation.member) for task states,
device task statuses and run states, each refusal naming the field and its choices."""

from __future__ import annotations

from enum import StrEnum

import pytest

from agata.errors import AgataError, ErrorCode
from agata.store import validation
from agata.store.run_store import RunState
from agata.store.store import DeviceTaskStatus, TaskState


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


def test_a_member_is_taken_by_value_or_as_itself() -> None:
    assert validation.member("colour", Colour, "blue") is Colour.BLUE
    assert validation.member("colour", Colour, Colour.RED) is Colour.RED


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (
            lambda: validation.member("colour", Colour, "green"),
            "colour must be one of red, blue",
        ),
        (
            lambda: validation.task_state(False, "bogus"),
            "task state must be one of " + ", ".join(s.value for s in TaskState),
        ),
        (
            lambda: validation.device_status("bogus"),
            "device task status must be one of " + ", ".join(s.value for s in DeviceTaskStatus),
        ),
        (
            lambda: validation.member("run state", RunState, "bogus"),
            "run state must be one of " + ", ".join(s.value for s in RunState),
        ),
    ],
)
def test_anything_else_is_refused_naming_the_choices(check: object, message: str) -> None:
    with pytest.raises(AgataError) as refused:
        check()  # type: ignore[operator]

    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    assert refused.value.message == message
