"""Trigger script of the digits task: the server fires it once the accuracy is reached.

The task runtime runs it from the bundle folder as ``python accuracy_reached.py <args>``,
where the arguments are the trigger's ``trigger_arguments`` (here the accuracy, e.g.
``0.9433``). It records the event in ``trigger_fired.json`` in the task's work folder
(``$AGATA_WORK_PATH``, else the current folder) and reports one ``print`` line.

It does not announce "Started" and never writes an ``error`` line: a trigger's output
must not be mistaken for the lifecycle of the task that fired it. On failure it writes
to stderr and exits with 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from agata.runtime import TaskReporter

OUTPUT = "trigger_fired.json"


def _accuracy(arguments: list[str]) -> float | None:
    """The first argument that reads as a number (a work path may come first)."""
    for argument in arguments:
        try:
            return float(argument)
        except ValueError:
            continue
    return None


def main(argv: list[str]) -> int:
    now = time.time()
    record = {
        "trigger": "accuracy_reached",
        "accuracy": _accuracy(argv),
        "arguments": argv,
        "time": datetime.fromtimestamp(now, UTC).isoformat(),
        "unix_time": now,
    }
    # The task's work folder (AGATA sets AGATA_WORK_PATH); the bundle folder is read-only
    # in spirit: what is written there could end up in the bundle listing.
    target = Path(os.environ.get("AGATA_WORK_PATH") or Path.cwd()) / OUTPUT
    temporary = target.with_name(f".{OUTPUT}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        temporary.replace(target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        print(f"accuracy_reached: cannot write {target}: {exc}", file=sys.stderr)
        return 1
    TaskReporter(announce=False).send_print(
        f"accuracy_reached: accuracy {record['accuracy']} at {record['time']}, written to {target}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
