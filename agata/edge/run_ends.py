"""Whether a client side that failed went down with its run: the agent's verdict.

A client side of a task cannot tell its run ending from its own failure: when the
operator stops the task, or its server side finishes or fails on the cloud, the client
sees its server vanish (Flower: ``UNAVAILABLE``, ``ConnectionError``) and exits with an
error, often before the device hears of the end. Quarantine is for a failure of that
task version on that device, so the agent judges every failure of a client side
against what it knows of the task's run before it calls it one:

- the run **ended** when, since the client side started, a push event said the task is
  not running (stopped, finished or failed on the cloud), a poll's answer left the task
  out, or an offer names another run (``run``), version or client arguments; such a
  failure ends the client side as ``stopped`` with the reason ``ended with the run``;
- otherwise the agent asks the cloud at once and, when the task is still offered as
  it was, waits up to the grace period (``run_end_grace``, 2 s) for news of an end
  (push events wake it), then asks once more: only a run still going then makes the
  failure a failure (``failed`` + ``quarantined``).

The cloud records a run's end in its store before it ends the server side, so the
first question usually settles a stop; the grace covers a server side that failed on
the cloud a moment after its clients noticed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Final

from agata.protocol.offers import TaskOffer
from agata.protocol.operations import MAX_REPORTED_LINE_CHARS, MAX_REPORTED_LINES
from agata.runtime.messages import OutputLine, Print

__all__ = [
    "ENDED_WITH_THE_RUN",
    "MAX_OUTPUT_BYTES",
    "MAX_OUTPUT_LINE",
    "MAX_OUTPUT_LINES",
    "RunEnds",
    "bounded_output",
    "offers_show_end",
]

#: The reason a client side that went down with its run is reported with.
ENDED_WITH_THE_RUN: Final = "ended with the run"
#: A failed client side's output sent with its report: at most this many last lines,
MAX_OUTPUT_LINES: Final = MAX_REPORTED_LINES
#: each cut to this many characters,
MAX_OUTPUT_LINE: Final = MAX_REPORTED_LINE_CHARS
#: and this many bytes (UTF-8 text) in all; a flood keeps its last lines.
MAX_OUTPUT_BYTES: Final = 64 * 1024


class RunEnds:
    """When the agent last learned that a task's run ended, per task.

    :meth:`record` is called for a push event saying the task is not running and for
    a poll's answer that leaves the task out; :meth:`ended_since` answers whether that
    happened after a given moment. Waiters of :meth:`wait` wake at every record.
    """

    def __init__(self) -> None:
        self._ends: dict[str, float] = {}
        self._news = asyncio.Event()

    def record(self, task_id: str, when: float | None = None) -> None:
        self._ends[task_id] = time.time() if when is None else when
        self._news.set()  # wakes every waiter now; later waiters wait for the next one
        self._news.clear()

    def record_absent(self, offers: Iterable[TaskOffer], task_ids: Iterable[str]) -> None:
        """Record an end for each of ``task_ids`` that ``offers`` (a poll's answer)
        leaves out."""
        offered = {offer.task_id for offer in offers}
        for task_id in task_ids:
            if task_id not in offered:
                self.record(task_id)

    def ended_since(self, task_id: str, since: float) -> bool:
        return self._ends.get(task_id, float("-inf")) >= since

    def forget(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self._ends.pop(task_id, None)

    async def wait(self, timeout: float) -> None:
        """Return at the next :meth:`record` or after ``timeout`` seconds."""
        if timeout <= 0:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._news.wait()
        except TimeoutError:
            pass


def offers_show_end(run_offer: TaskOffer, offers: Sequence[TaskOffer]) -> bool:
    """Whether ``offers`` (the cloud's answer now) show that the run ``run_offer``
    belonged to is over: the task is not offered, or offered as another run."""
    for offer in offers:
        if offer.task_id != run_offer.task_id:
            continue
        if run_offer.run is not None and offer.run is not None and offer.run != run_offer.run:
            return True
        return offer.version != run_offer.version or offer.argv != run_offer.argv
    return True


def bounded_output(lines: Iterable[OutputLine | Print]) -> list[dict[str, str]]:
    """The last lines of a client side's output as sent with a report
    (``{"stream", "text"}``), within :data:`MAX_OUTPUT_LINES` lines of at most
    :data:`MAX_OUTPUT_LINE` characters and :data:`MAX_OUTPUT_BYTES` bytes: a flood is
    cut from its start, and the first line then says how many lines were left out."""
    items = [
        {
            "stream": str(line.stream) if isinstance(line, OutputLine) else "print",
            "text": (line.text if isinstance(line, OutputLine) else line.message)[:MAX_OUTPUT_LINE],
        }
        for line in lines
    ]
    total = len(items)
    kept: list[dict[str, str]] = []
    size = 100  # room for the note on a cut
    for item in reversed(items[-MAX_OUTPUT_LINES:]):
        size += len(item["text"].encode("utf-8", errors="replace")) + 32
        if size > MAX_OUTPUT_BYTES:
            break
        kept.append(item)
    kept.reverse()
    if len(kept) < total:
        if len(kept) >= MAX_OUTPUT_LINES:
            kept.pop(0)  # the note takes its place
        cut = total - len(kept)
        kept.insert(0, {"stream": "supervisor", "text": f"[{cut} earlier line(s) left out]"})
    return kept
