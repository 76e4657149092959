"""What ``server.py`` and ``client.py`` of this bundle share: the process contract.

:func:`run_task` is the life cycle of a task process: announce "Started", run, then
report "Finished" (exit 0) or the exception as an ``error`` line (exit 1).

Each side is started as ``python <side>.py <work_path> [arguments...]``. The work path
is optional here (a hand-started client may be run as ``python client.py cli`` or with
no positional argument at all), and this bundle does not use it.

A wrong argument must not end the process with argparse's exit code 2 and a usage text:
the parser raises :class:`ArgumentError` instead, so the task reports it as an ``error``
line like any other failure.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Callable
from typing import Any

from agata.runtime import TaskReporter

log = logging.getLogger(__name__)

_ADDRESS = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d{1,5})$")


class ArgumentError(ValueError):
    """A command-line argument is missing or wrong."""


class TaskArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with the optional ``work_path`` positional that raises."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.add_argument(
            "work_path",
            nargs="?",
            default=None,
            help="the task's work folder, given by the task runtime (unused; may be absent)",
        )

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ArgumentError(f"{self.prog}: {message}")


def address(value: str) -> str:
    """``host:port`` or ``[ipv6]:port``, with a port in 1..65535."""
    match = _ADDRESS.match(value)
    if not match or not 0 < int(match["port"]) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return number


def fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0.0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return number


def run_task(main: Callable[[list[str], TaskReporter], Any], argv: list[str]) -> int:
    """Run ``main(argv, reporter)`` under the task protocol; returns the exit code."""
    reporter = TaskReporter()  # {"type": "info", "info": "Started"}
    try:
        main(argv, reporter)
    except SystemExit as exc:
        if exc.code in (0, None):
            raise  # stopped by SIGINT/SIGTERM (Flower exits 0) or --help: not Finished
        # Flower ends the process itself on some errors, e.g. a port already in use.
        log.error("exited: %s", exc.code)
        reporter.send_error(RuntimeError(str(exc.code)))
        return 1
    except Exception as exc:
        log.exception("task failed")
        reporter.send_error(exc)
        return 1
    reporter.finished()
    return 0
