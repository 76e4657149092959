"""What the agent remembers across restarts, in one small JSON file.

``<data_dir>/edge/state.json`` holds:

- ``running``: the task processes this agent started and has not seen end (task id,
  version, pid, process group and the runtime's token). After a crash or SIGKILL of
  the agent, the next start ends those groups (see ``Agent``) — no orphan survives;
- ``quarantine``: tasks that failed on this device, with the reason, the version that
  failed and when the quarantine ends;
- ``finished``: the task versions this device completed (not run again while the cloud
  still offers the same version);
- ``stats``: counters (tasks started, finished, failed, stopped, bundles downloaded).

Every change is written at once and atomically (temporary file, fsync, rename), so a
crash leaves the old or the new state, never half of one. A quarantine added on the
failover path is renamed into place at once but fsynced by :meth:`LocalState.sync`
after the next task's spawn: a crash or kill of the agent in between keeps it (the
kernel has the file), only a power loss before the sync could lose it. A file that cannot be read is
moved aside as ``state.json.corrupt-<time>`` with a warning, and the agent starts afresh.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["LocalState", "QuarantineEntry", "RunningRecord"]

logger = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True, slots=True)
class RunningRecord:
    task_id: str
    version: str
    pid: int
    pgid: int
    token: str
    started_at: float


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    task_id: str
    version: str
    reason: str
    since: float
    until: float

    def active(self, now: float) -> bool:
        return now < self.until


class LocalState:
    """The agent's state file. Methods that change something save it before returning."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.running: dict[str, RunningRecord] = {}
        self.quarantine: dict[str, QuarantineEntry] = {}
        self.finished: dict[str, str] = {}
        self.stats: Counter[str] = Counter()
        self._sync_pending = False  # a durable change saved without fsync (see sync)

    @classmethod
    def load(cls, path: Path) -> LocalState:
        """Read the state (empty when the file does not exist or cannot be used)."""
        state = cls(path)
        try:
            raw = path.read_text("utf-8")
        except FileNotFoundError:
            return state
        except OSError as exc:
            logger.warning("cannot read %s (%s); starting with an empty state", path, exc)
            return state
        try:
            state._restore(json.loads(raw))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                path.rename(aside)
            logger.warning(
                "state file %s is unusable (%s); moved to %s, starting afresh", path, exc, aside
            )
            return cls(path)
        return state

    def _restore(self, data: Any) -> None:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not an AGATA edge state file of a known format")
        self.running = {item["task_id"]: RunningRecord(**item) for item in data.get("running", [])}
        self.quarantine = {
            item["task_id"]: QuarantineEntry(**item) for item in data.get("quarantine", [])
        }
        self.finished = {str(k): str(v) for k, v in dict(data.get("finished", {})).items()}
        self.stats = Counter({str(k): int(v) for k, v in dict(data.get("stats", {})).items()})

    def save(self, *, durable: bool = True) -> None:
        """Write the state atomically (temporary file + rename).

        ``durable`` also fsyncs, so the change survives a power loss. Records of running
        processes do without: after a power loss there is no process left to end, and
        after a crash of the agent alone the page cache still holds them.
        """
        data = {
            "format": FORMAT,
            "running": [asdict(r) for r in self.running.values()],
            "quarantine": [asdict(q) for q in self.quarantine.values()],
            "finished": self.finished,
            "stats": dict(self.stats),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with temporary.open("w", encoding="utf-8") as out:
            json.dump(data, out, indent=1, sort_keys=True)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temporary, self.path)
        if durable:
            self._sync_pending = False
            self._sync_folder()

    def sync(self) -> None:
        """Make a change saved with ``sync_later`` durable (fsync of the file and of its
        folder); nothing to do when every change since was saved durably."""
        if not self._sync_pending:
            return
        self._sync_pending = False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._sync_folder()

    def _sync_folder(self) -> None:
        with contextlib.suppress(OSError):  # make the rename itself durable
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- running task processes ----------------------------------------------------------

    def record_running(self, record: RunningRecord) -> None:
        self.running[record.task_id] = record
        self.save(durable=False)

    def forget_running(self, task_id: str, pid: int | None = None) -> None:
        """Forget the record of ``task_id`` (only if it is still ``pid``'s, when given)."""
        record = self.running.get(task_id)
        if record is not None and (pid is None or record.pid == pid):
            del self.running[task_id]
            self.save(durable=False)

    # -- quarantine -----------------------------------------------------------------------

    def add_quarantine(
        self,
        task_id: str,
        version: str,
        reason: str,
        seconds: float,
        now: float | None = None,
        *,
        sync_later: bool = False,
    ) -> QuarantineEntry:
        """Put a task version in quarantine and save it. ``sync_later``: written and
        renamed into place now (a crash of the agent keeps it), fsynced by the caller's
        :meth:`sync` later (failover: after the next spawn)."""
        now = time.time() if now is None else now
        entry = QuarantineEntry(task_id, version, reason[:2000], now, now + seconds)
        self.quarantine[task_id] = entry
        self.stats["quarantined"] += 1
        self.save(durable=not sync_later)
        if sync_later:
            self._sync_pending = True
        return entry

    def quarantined(
        self, task_id: str, version: str | None = None, now: float | None = None
    ) -> QuarantineEntry | None:
        """The active quarantine of ``task_id``. A new version of the task (the operator
        changed it) is not in quarantine."""
        entry = self.quarantine.get(task_id)
        now = time.time() if now is None else now
        if entry is None or not entry.active(now):
            return None
        if version is not None and entry.version != version:
            return None
        return entry

    def expire_quarantine(self, now: float | None = None) -> list[QuarantineEntry]:
        """Drop quarantines that ended; return them."""
        now = time.time() if now is None else now
        ended = [entry for entry in self.quarantine.values() if not entry.active(now)]
        for entry in ended:
            del self.quarantine[entry.task_id]
        if ended:
            self.save()
        return ended

    def clear_quarantine(self, task_id: str | None = None) -> int:
        """Lift the quarantine of one task (or all); return how many were lifted."""
        if task_id is None:
            count = len(self.quarantine)
            self.quarantine.clear()
        else:
            count = 1 if self.quarantine.pop(task_id, None) is not None else 0
        if count:
            self.save()
        return count

    # -- finished tasks and counters -------------------------------------------------

    def mark_finished(self, task_id: str, version: str) -> None:
        self.finished[task_id] = version
        self.save()

    def forget_finished(self, task_ids: set[str]) -> None:
        dropped = [task_id for task_id in self.finished if task_id in task_ids]
        for task_id in dropped:
            del self.finished[task_id]
        if dropped:
            self.save()

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a counter; written with the next change (counters are not worth a
        disk write of their own)."""
        self.stats[name] += amount
