"""Placeholders in client arguments: each device's own values."""

from __future__ import annotations

import pytest

from agata.edge.arguments import expand_client_arguments, placeholder_values
from agata.edge.cloud_client import TaskOffer
from agata.edge.device_info import DeviceInfo
from agata.errors import AgataError, ErrorCode


def values(**extra: object) -> dict[str, str]:
    device = DeviceInfo(
        "pi-7",
        data_qnt=120.0,
        avg_acc_contrib=0.25,
        sensors=("camera", "gps"),
        extra=extra,  # type: ignore[arg-type]
    )
    offer = TaskOffer.model_validate({"ID": "t", "host": "10.0.0.5", "port": 8080})
    return placeholder_values(device, offer)


def test_device_fields_extra_attributes_and_the_tasks_address() -> None:
    argv = expand_client_arguments(
        [
            "--client-index",
            "{client_index}",
            "--name={user_id}",
            "{host}:{port}",
            "{data_qnt}/{avg_acc_contrib}",
            "{sensors}",
            "{gpu}",
        ],
        values(client_index=2, gpu=True),
    )
    assert argv == [
        "--client-index",
        "2",
        "--name=pi-7",
        "10.0.0.5:8080",
        "120/0.25",
        "camera,gps",
        "true",
    ]


def test_text_without_placeholders_is_left_alone() -> None:
    argv = ['{"a": 1}', "{{user_id}}", "{", "}", "{1}", "{ user_id }", "a}}b"]
    assert expand_client_arguments(argv, values()) == [
        '{"a": 1}',
        "{user_id}",
        "{",
        "}",
        "{1}",
        "{ user_id }",
        "a}b",
    ]


def test_an_unknown_placeholder_names_itself_and_what_is_known() -> None:
    with pytest.raises(AgataError) as caught:
        expand_client_arguments(["--i", "{client_index}"], values(zone="eu"))
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert "{client_index}" in caught.value.message
    assert "zone" in caught.value.message and "user_id" in caught.value.message


def test_attribute_access_and_format_specs_are_not_placeholders() -> None:
    argv = ["{user_id.__class__}", "{user_id!r}", "{user_id:>10}", "{user_id[0]}"]
    assert expand_client_arguments(argv, values()) == argv
