"""TaskReporter writes one flushed JSON line per call, from any thread."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agata.runtime import TaskReporter


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_constructor_announces_started() -> None:
    out = io.StringIO()

    TaskReporter(stream=out)

    assert _lines(out) == [{"type": "info", "info": "Started"}]


def test_announce_false_writes_nothing() -> None:
    out = io.StringIO()

    TaskReporter(announce=False, stream=out)

    assert out.getvalue() == ""


def test_original_methods_write_the_protocol() -> None:
    out = io.StringIO()
    reporter = TaskReporter(announce=False, stream=out)

    reporter.send_stats("2", "0.5")
    reporter.send_stats(3, 0.75)
    reporter.send_print("hello")
    reporter.send_error(ValueError("bad data"))
    reporter.send_error("plain text")
    reporter.trigger("on_round", "--x 1")
    reporter.trigger("bare")
    reporter.send_info("Finished")

    assert _lines(out) == [
        {"type": "model", "round": 2, "acc": "0.5"},
        {"type": "model", "round": 3, "acc": 0.75},
        {"type": "print", "message": "hello"},
        {"type": "error", "exception": "ValueError: bad data"},
        {"type": "error", "exception": "plain text"},
        {"type": "trigger", "trigger_name": "on_round", "trigger_arguments": "--x 1"},
        {"type": "trigger", "trigger_name": "bare", "trigger_arguments": ""},
        {"type": "info", "info": "Finished"},
    ]


def test_save_artifact_writes_its_line() -> None:
    out = io.StringIO()
    reporter = TaskReporter(announce=False, stream=out)

    reporter.save_artifact("model.npz")
    reporter.save_artifact(Path("/work/out") / "m.bin")

    assert _lines(out) == [
        {"type": "artifact", "path": "model.npz"},
        {"type": "artifact", "path": "/work/out/m.bin"},
    ]


def test_send_metrics_and_finished() -> None:
    out = io.StringIO()
    reporter = TaskReporter(announce=False, stream=out)

    reporter.send_metrics(1, acc=0.9, loss=Decimal("0.25"), examples=120, type="x")
    reporter.finished()

    assert _lines(out) == [
        {"type": "model", "round": 1, "acc": 0.9, "loss": 0.25, "examples": 120},
        {"type": "info", "info": "Finished"},
    ]


def test_numpy_scalars_become_json_numbers() -> None:
    np = pytest.importorskip("numpy")
    out = io.StringIO()
    reporter = TaskReporter(announce=False, stream=out)

    reporter.send_metrics(np.int64(4), acc=np.float32(0.5), examples=np.int64(7))

    assert _lines(out) == [{"type": "model", "round": 4, "acc": 0.5, "examples": 7}]


def test_lines_never_interleave_across_threads() -> None:
    out = io.StringIO()
    reporter = TaskReporter(announce=False, stream=out)

    def work(n: int) -> None:
        for i in range(200):
            reporter.send_print(f"thread {n} line {i} " + "x" * 200)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(_lines(out)) == 8 * 200


def test_default_stream_is_stdout_and_import_is_light() -> None:
    code = (
        "import sys\n"
        "from agata.runtime import TaskReporter\n"
        "TaskReporter().send_stats(1, 0.5)\n"
        "heavy = [m for m in ('asyncio', 'agata.runtime.supervisor', 'pydantic')"
        " if m in sys.modules]\n"
        "sys.stderr.write(repr(heavy))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )

    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"type": "info", "info": "Started"},
        {"type": "model", "round": 1, "acc": 0.5},
    ]
    assert result.stderr == "[]"
