"""Typed task messages and the tolerant parser of the task protocol.

A task process writes JSON lines to stdout (see :mod:`agata.runtime.reporter`). Each
line becomes one message:

=========  ===================================  ==========================
``type``   fields                               message
=========  ===================================  ==========================
info       ``info``                             :class:`Info`
model      ``round``, ``acc``, other metrics    :class:`Model`
print      ``message``                          :class:`Print`
error      ``exception``                        :class:`Error`
trigger    ``trigger_name``, ``trigger_arguments``  :class:`Trigger`
artifact   ``path``                             :class:`Artifact`
=========  ===================================  ==========================

``artifact`` is AGATA's addition (the original had the first five): the side saved a file
of its work folder as an artifact of the run.

Anything else — plain text, JSON that is not an object, an unknown ``type``, a known type
with missing or unusable fields (a model without a round, round ``"abc"``), an over-long
line — is a :class:`OutputLine`. Parsing never raises. Lines read from stderr are always
log lines.

Standard library only: cheap to import.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

__all__ = [
    "MAX_LINE_CHARS",
    "TRUNCATED_MARKER",
    "Artifact",
    "Error",
    "Info",
    "Model",
    "OutputLine",
    "Print",
    "Stream",
    "TaskMessage",
    "Trigger",
    "parse_line",
]

MAX_LINE_CHARS = 16 * 1024
"""Longest line kept; the rest is dropped and :data:`TRUNCATED_MARKER` appended."""

TRUNCATED_MARKER = " …[truncated]"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class Stream(StrEnum):
    """Where a log line came from."""

    STDOUT = "stdout"
    STDERR = "stderr"
    SUPERVISOR = "supervisor"  # a note from the runtime itself (e.g. a refused trigger)


@dataclass(frozen=True, slots=True)
class Info:
    """Lifecycle: ``"Started"``, ``"Finished"`` (ends the task), or anything else."""

    kind: ClassVar[str] = "info"
    info: str

    @property
    def is_finished(self) -> bool:
        return self.info == "Finished"


@dataclass(frozen=True, slots=True)
class Model:
    """Training progress of one round. Metrics are finite floats (``acc``, ``loss``, ...)."""

    kind: ClassVar[str] = "model"
    round: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def acc(self) -> float | None:
        """The accuracy, sent as ``acc`` (the original) or ``accuracy``."""
        value = self.metrics.get("acc")
        return value if value is not None else self.metrics.get("accuracy")


@dataclass(frozen=True, slots=True)
class Print:
    """A log line meant for the operator."""

    kind: ClassVar[str] = "print"
    message: str


@dataclass(frozen=True, slots=True)
class Error:
    """The task failed; whoever supervises it stops it."""

    kind: ClassVar[str] = "error"
    exception: str


@dataclass(frozen=True, slots=True)
class Trigger:
    """Run ``<trigger_name>.py`` of the bundle with ``arguments``.

    ``trigger_name`` is as sent (validated by the supervisor, not here). A string
    ``trigger_arguments`` is split like a shell would; a list gives one argument per
    item; any other JSON value becomes one argument holding its JSON text.
    """

    kind: ClassVar[str] = "trigger"
    trigger_name: str
    arguments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Artifact:
    """Keep the file at ``path`` (as sent: relative to the side's work folder, or
    absolute) as an artifact of the run. Checked by whoever keeps it, not here."""

    kind: ClassVar[str] = "artifact"
    path: str


@dataclass(frozen=True, slots=True)
class OutputLine:
    """A line that is not a protocol message (or anything read from stderr)."""

    kind: ClassVar[str] = "log"
    stream: Stream
    text: str


TaskMessage = Info | Model | Print | Error | Trigger | Artifact | OutputLine


def parse_line(
    line: str | bytes, stream: Stream | str = Stream.STDOUT, *, truncated: bool = False
) -> TaskMessage:
    """Turn one line of a task's output into a message. Never raises.

    Only stdout carries the protocol: a line from any other stream is a :class:`OutputLine`.
    A trailing newline is removed; a line longer than :data:`MAX_LINE_CHARS` (or one the
    caller already cut, ``truncated=True``) is cut, marked and kept as a log line.
    """
    stream = Stream(stream)
    text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
    text = text.rstrip("\r\n")
    if truncated or len(text) > MAX_LINE_CHARS:
        return OutputLine(stream, _clean(text[:MAX_LINE_CHARS]) + TRUNCATED_MARKER)
    if stream is not Stream.STDOUT or not text.lstrip().startswith("{"):
        return OutputLine(stream, _clean(text))
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        return OutputLine(stream, _clean(text))
    message = _message(record) if isinstance(record, dict) else None
    return message if message is not None else OutputLine(stream, _clean(text))


def _clean(text: str) -> str:
    """Drop ANSI colour codes (Flower colours its logs even when not on a terminal)."""
    return _ANSI.sub("", text) if "\x1b" in text else text


def _message(record: dict[str, Any]) -> TaskMessage | None:
    kind = record.get("type")
    if kind == "info":
        info = record.get("info")
        return Info(info) if isinstance(info, str) else None
    if kind == "model":
        return _model(record)
    if kind == "print":
        message = record.get("message")
        return Print(_text(message)) if message is not None else None
    if kind == "error":
        # The task said it failed: honour that even without a usable text.
        exception = record.get("exception")
        return Error(_text(exception) if exception not in (None, "") else "unknown error")
    if kind == "trigger":
        name = record.get("trigger_name")
        if not isinstance(name, str) or not name:
            return None
        arguments = _arguments(record.get("trigger_arguments"))
        return Trigger(name, arguments) if arguments is not None else None
    if kind == "artifact":
        path = record.get("path")
        return Artifact(path) if isinstance(path, str) and path else None
    return None


def _model(record: dict[str, Any]) -> Model | None:
    task_round = _number(record.get("round"))
    if task_round is None or not task_round.is_integer() or task_round < 0:
        return None
    metrics: dict[str, float] = {}
    for name, value in record.items():
        if name in ("type", "round"):
            continue
        number = _number(value)
        if number is not None:  # a metric that is not a finite number is left out
            metrics[name] = number
    return Model(int(task_round), metrics)


def _number(value: Any) -> float | None:
    """A finite float from a JSON number or a numeric string (the original sent strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _arguments(value: Any) -> tuple[str, ...] | None:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError:  # unbalanced quotes: split on white space
            return tuple(value.split())
    if isinstance(value, list):
        return tuple(item if isinstance(item, str) else json.dumps(item) for item in value)
    return (json.dumps(value),)
