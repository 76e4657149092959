"""Replies as the gateway passes them on: our own encoding sliced, any other re-encoded."""

from __future__ import annotations

import json

import pytest

from agata.bus.envelope import (
    decode,
    decode_reply,
    encode,
    encode_failure,
    encode_success,
    reply_value_json,
)
from agata.errors import AgataError, ErrorCode


@pytest.mark.parametrize(
    "value",
    [None, 0, "é ünïcode", [], {"tasks": [{"task_id": "t1", "port": 8080}]}, [1.5, True]],
)
def test_our_replies_hand_over_the_value_as_it_was_encoded(value: object) -> None:
    body = encode_success(value)

    raw = reply_value_json(body, "op")

    assert json.loads(raw) == value
    assert body == b'{"status_code":200,"return":' + raw + b"}"


@pytest.mark.parametrize(
    "body",
    [
        # an original service: json.dumps with its default separators
        b'{"status_code": 200, "return": {"a": [1, 2]}}',
        # compact, but with a key after "return": slicing would hand over broken JSON
        b'{"status_code":200,"return":{"a":[1,2]},"extra":"x"}',
        # keys the other way round
        b'{"return":{"a":[1,2]},"status_code":200}',
    ],
)
def test_other_replies_are_encoded_again(body: bytes) -> None:
    assert json.loads(reply_value_json(body, "op")) == {"a": [1, 2]}


def test_failures_and_malformed_replies_raise() -> None:
    with pytest.raises(AgataError) as failed:
        reply_value_json(encode_failure(AgataError(ErrorCode.NOT_FOUND, "no task t9")), "op")
    with pytest.raises(AgataError) as malformed:
        reply_value_json(b'["status_code", 200]', "op")

    assert (failed.value.status_code, failed.value.message) == (404, "no task t9")
    assert (
        malformed.value.status_code == 500 and "malformed reply to 'op'" in malformed.value.message
    )


@pytest.mark.parametrize(
    "value",
    [
        {"ID": "t1", "port": 8080, "tags": ["a", "é"], "files": [{"size": 12, "sha256": "ab"}]},
        [0.1, 1.5, -2.25, 1e300, True, False, None, "", '\u2028 <>&\\"', 2**70],
        float("nan"),
        [float("inf"), -float("inf")],
    ],
)
def test_encoding_writes_the_bytes_of_the_standard_library(value: object) -> None:
    assert encode(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def test_json_only_the_standard_library_reads_is_still_read() -> None:
    body = b'{"text": "\\ud800"}'  # a lone surrogate escape

    assert decode(body) == json.loads(body)


def test_an_own_reply_is_read_without_parsing_and_like_a_parsed_one() -> None:
    success = encode_success({"a": [1, 2]})
    failure = encode_failure(AgataError(ErrorCode.NOT_FOUND, "no task t9"))

    assert reply_value_json(success, "op") == reply_value_json(bytes(success), "op")
    assert decode_reply(success, "op") == decode_reply(bytes(success), "op") == {"a": [1, 2]}
    for body in (failure, bytes(failure)):
        with pytest.raises(AgataError) as caught:
            decode_reply(body, "op")
        assert (caught.value.status_code, caught.value.message) == (404, "no task t9")
