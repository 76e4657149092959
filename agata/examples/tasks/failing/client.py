"""Client side of the failing task (experiment 2's task E): it fails on purpose at start.

Started like any task client (``python client.py <work_path> [arguments...]``), it
announces "Started", then raises before contacting any server: it reports the exception
as an ``error`` line and exits with code 1. On a device, the edge agent then puts the
task in quarantine and switches to the next compatible task. Arguments are ignored.
"""

from __future__ import annotations

import logging
import sys

from agata.runtime import TaskReporter

log = logging.getLogger("failing.client")


class TaskFailedOnPurpose(RuntimeError):
    """The error this task exists to raise."""


def run(argv: list[str]) -> None:
    raise TaskFailedOnPurpose("the failing example task fails at start, on purpose")


def main(argv: list[str]) -> int:
    reporter = TaskReporter()
    try:
        run(argv)
    except Exception as exc:
        log.error("client failed", exc_info=exc)
        reporter.send_error(exc)
        return 1
    reporter.finished()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
