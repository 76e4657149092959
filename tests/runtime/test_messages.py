"""parse_line: protocol lines become typed messages; anything else is a OutputLine."""

from __future__ import annotations

import json

import pytest

from agata.runtime.messages import (
    MAX_LINE_CHARS,
    TRUNCATED_MARKER,
    Artifact,
    Error,
    Info,
    Model,
    OutputLine,
    Print,
    Stream,
    Trigger,
    parse_line,
)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"type": "info", "info": "Started"}\n', Info("Started")),
        ('{"type":"model","round":3,"acc":0.5}', Model(3, {"acc": 0.5})),
        ('{"type":"model","round":"3","acc":"0.5"}', Model(3, {"acc": 0.5})),
        (
            '{"type":"model","round":1,"accuracy":0.9,"loss":0.1,"examples":10}',
            Model(1, {"accuracy": 0.9, "loss": 0.1, "examples": 10.0}),
        ),
        ('{"type":"model","round":2.0,"acc":"n/a","loss":NaN}', Model(2, {})),
        ('{"type":"print","message":"hello"}', Print("hello")),
        ('{"type":"print","message":{"a":1}}', Print('{"a": 1}')),
        ('{"type":"error","exception":"boom"}', Error("boom")),
        ('{"type":"error"}', Error("unknown error")),
        (
            '{"type":"trigger","trigger_name":"t","trigger_arguments":"a \'b c\'"}',
            Trigger("t", ("a", "b c")),
        ),
        (
            '{"type":"trigger","trigger_name":"t","trigger_arguments":["x",1]}',
            Trigger("t", ("x", "1")),
        ),
        (
            '{"type":"trigger","trigger_name":"t","trigger_arguments":{"k":1}}',
            Trigger("t", ('{"k": 1}',)),
        ),
        ('{"type":"trigger","trigger_name":"t"}', Trigger("t", ())),
        ('{"type":"artifact","path":"model.npz"}', Artifact("model.npz")),
        ('{"type":"artifact","path":"/w/out/m.bin"}', Artifact("/w/out/m.bin")),
        (
            '{"type":"trigger","trigger_name":"t","trigger_arguments":"a \'b"}',
            Trigger("t", ("a", "'b")),
        ),
    ],
)
def test_protocol_lines(line: str, expected: object) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "plain text",
        "",
        "{not json",
        "[1, 2]",
        '"a string"',
        '{"no_type": 1}',
        '{"type": "unknown"}',
        '{"type": "model", "acc": 0.5}',
        '{"type": "model", "round": "abc", "acc": 0.5}',
        '{"type": "model", "round": 1.5}',
        '{"type": "model", "round": -1}',
        '{"type": "model", "round": true}',
        '{"type": "info"}',
        '{"type": "info", "info": 3}',
        '{"type": "print"}',
        '{"type": "trigger"}',
        '{"type": "trigger", "trigger_name": ""}',
        '{"type": "artifact"}',
        '{"type": "artifact", "path": ""}',
        '{"type": "artifact", "path": 3}',
        "[" * 100_000,
    ],
)
def test_anything_else_is_a_log_line(line: str) -> None:
    message = parse_line(line)

    assert isinstance(message, OutputLine)
    assert message.stream is Stream.STDOUT


def test_stderr_never_carries_the_protocol() -> None:
    assert parse_line('{"type":"info","info":"Finished"}', "stderr") == OutputLine(
        Stream.STDERR, '{"type":"info","info":"Finished"}'
    )


def test_long_lines_are_cut_and_marked() -> None:
    record = json.dumps({"type": "print", "message": "x" * (2 * MAX_LINE_CHARS)})

    message = parse_line(record)

    assert isinstance(message, OutputLine)
    assert message.text.endswith(TRUNCATED_MARKER)
    assert len(message.text) == MAX_LINE_CHARS + len(TRUNCATED_MARKER)


def test_bytes_ansi_and_bad_utf8() -> None:
    message = parse_line(b"\x1b[92mINFO \x1b[0m: round 1 \xff\r\n", Stream.STDERR)

    assert message == OutputLine(Stream.STDERR, "INFO : round 1 \ufffd")


def test_model_acc_property() -> None:
    assert Model(1, {"accuracy": 0.5}).acc == 0.5
    assert Model(1, {"acc": 0.7, "accuracy": 0.5}).acc == 0.7
    assert Model(1, {}).acc is None
