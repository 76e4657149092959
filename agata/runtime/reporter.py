"""``TaskReporter``: how a task process talks to whoever started it.

A task process (``server.py`` / ``client.py`` of a bundle) reports by writing one JSON
object per line to its stdout; the supervisor turns those lines into typed messages
(see :mod:`agata.runtime.messages`). The stdout of a task IS the protocol, which is why
this module writes to ``sys.stdout`` directly.

This module must stay importable without anything but the standard library: task
bundles import it, and importing it must cost nothing.

The method names are those of the original Flower Task Daemon Lib (``send_info``,
``send_stats``, ``send_print``, ``send_error``, ``trigger``) so that bundles written for
it run unchanged apart from the import. Unlike the original, numbers are written as
JSON numbers (the supervisor accepts both numbers and numeric strings).
"""

from __future__ import annotations

import json
import math
import operator
import os
import sys
import threading
from typing import Any, TextIO

__all__ = ["TaskReporter"]

STARTED = "Started"
FINISHED = "Finished"


def _number(value: Any) -> Any:
    """Make ``value`` JSON-friendly, keeping numbers numbers (numpy scalars included)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    try:
        return operator.index(value)  # numpy integers
    except TypeError:
        pass
    try:
        return float(value)  # numpy floats, tensors of one element, Decimal
    except (TypeError, ValueError):
        return str(value)


def _round(value: Any) -> Any:
    """A round number as an ``int`` when it is one (``"3"`` and ``3.0`` included)."""
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isfinite(as_float) and as_float.is_integer():
        return int(as_float)
    return as_float


class TaskReporter:
    """Writes the task protocol's JSON lines to stdout.

    Thread-safe: Flower calls strategies and clients from worker threads, so every line
    is written and flushed under one lock and lines never interleave.

    Args:
        announce: send ``{"type": "info", "info": "Started"}`` right away (as the
            original did). Pass ``False`` to announce later with ``send_info("Started")``.
        stream: where to write; ``None`` (the default) means the current ``sys.stdout``
            at the moment of each write.
    """

    def __init__(self, announce: bool = True, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        if announce:
            self.send_info(STARTED)

    # -- the original API ---------------------------------------------------------------

    def send_info(self, info: str) -> None:
        """Lifecycle information: ``"Started"``, ``"Finished"`` (ends the task), ..."""
        self._send({"type": "info", "info": str(info)})

    def send_stats(self, task_round: Any, acc: Any) -> None:
        """Progress of training: the round and its accuracy."""
        self._send({"type": "model", "round": _round(task_round), "acc": _number(acc)})

    def send_print(self, msg: Any) -> None:
        """A log line meant for the operator."""
        self._send({"type": "print", "message": str(msg)})

    def send_error(self, exception: BaseException | str) -> None:
        """Report that the task failed; whoever started it then stops it."""
        if isinstance(exception, BaseException):
            text = f"{type(exception).__name__}: {exception}"
        else:
            text = str(exception)
        self._send({"type": "error", "exception": text})

    def trigger(self, trigger_name: str, trigger_arguments: Any = "") -> None:
        """Ask the supervisor to run ``<trigger_name>.py`` of the bundle."""
        self._send(
            {
                "type": "trigger",
                "trigger_name": str(trigger_name),
                "trigger_arguments": trigger_arguments,
            }
        )

    # -- additions ----------------------------------------------------------------------

    def send_metrics(self, round: int, **metrics: Any) -> None:
        """Progress of training with any metrics: ``acc`` (or ``accuracy``), ``loss``,
        ``examples``, ... Values must be numbers (numpy scalars are converted)."""
        record: dict[str, Any] = {"type": "model", "round": _round(round)}
        for name, value in metrics.items():
            if name in ("type", "round"):
                continue
            record[name] = _number(value)
        self._send(record)

    def save_artifact(self, path: str | os.PathLike[str]) -> None:
        """Ask whoever runs this side to keep the file at ``path`` (in the side's work
        folder, the first argument it was started with) as an artifact of the run: the
        cloud copies what a server side saves into the run's store, where the operator
        downloads it. Write the file completely before calling this; its base name is
        the artifact's name (bundle file name rules). Devices ignore it."""
        self._send({"type": "artifact", "path": os.fspath(path)})

    def finished(self) -> None:
        """Report that the task ended normally (``info`` ``"Finished"``)."""
        self.send_info(FINISHED)

    # -- writing ------------------------------------------------------------------------

    def _send(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=str, separators=(", ", ": ")) + "\n"
        with self._lock:
            stream = self._stream if self._stream is not None else sys.stdout
            stream.write(line)
            stream.flush()
