"""One client side run by the agent, and the cleanup of runs a killed agent left."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

from agata.edge.local_state import LocalState
from agata.errors import AgataError
from agata.protocol.offers import TaskOffer
from agata.runtime.messages import OutputLine, Stream
from agata.runtime.process import kill_process_group
from agata.runtime.sandbox import TaskSandbox
from agata.runtime.supervisor import TaskProcess

__all__ = ["TaskRun", "recover_leftovers"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class TaskRun:
    """The client side of one task version, from its start to its end.

    ``ended`` is set once the agent has dealt with the end (failed, finished or stopped
    by the agent): the first cause wins, later news of the same run changes nothing.
    """

    offer: TaskOffer
    started_at: float
    process: TaskProcess = field(init=False)
    watcher: asyncio.Task[None] | None = None
    ended: bool = False
    round: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def failure_reason(self, reason: str, lines: int = 3) -> str:
        """``reason`` plus the last lines the process wrote to stderr (a traceback's end
        says why better than an exit code)."""
        tail = [
            line.text.strip()
            for line in self.process.tail(50)
            if isinstance(line, OutputLine) and line.stream is Stream.STDERR and line.text.strip()
        ]
        if not tail:
            return reason
        return f"{reason}: {' | '.join(tail[-lines:])}"[:2000]


def recover_leftovers(state: LocalState, sandbox: TaskSandbox | None = None) -> int:
    """End the runs recorded as running by a previous agent (their containers, and their
    process groups); return how many were still there. A recycled pgid that is not a
    task of ours is left alone."""
    ended = 0
    for record in list(state.running.values()):
        try:
            if sandbox is not None:
                left = sandbox.reap(record.token, record.pgid)
            else:
                token = record.token or None
                left = kill_process_group(record.pgid, signal.SIGKILL, token=token)
            if left:
                ended += 1
                logger.warning(
                    "task %s: ended the process group %d left by the previous agent",
                    record.task_id,
                    record.pgid,
                )
        except AgataError as exc:
            logger.warning("task %s: leftover group not ended: %s", record.task_id, exc)
        state.forget_running(record.task_id)
    return ended
