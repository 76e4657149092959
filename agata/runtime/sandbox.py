"""``TaskSandbox``: what the cloud and the agent need to start contained task sides.

One per service, made at its start: it detects the containment (and says which in the
log and the health record), resolves the task user, prepares each side's area (a bundle
copy and a work folder the task user owns, see :mod:`agata.runtime.task_user`) and ends
what a killed previous life of the service left (:meth:`TaskSandbox.reap`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from pathlib import Path

from agata.errors import AgataError, ErrorCode
from agata.runtime.containment import Containment, ContainmentKind, detect_containment
from agata.runtime.limits import Limits
from agata.runtime.process import AsyncioProcessLauncher, kill_process_group
from agata.runtime.task_user import prepare_area, resolve_task_user

__all__ = ["TaskSandbox", "default_task_dir"]

logger = logging.getLogger(__name__)


def default_task_dir(data_dir: Path) -> Path:
    """Where task areas go when a task user is in effect: a folder of its own under the
    system's temporary folder (``/tmp`` is passable by every user, a data folder under
    ``/root`` is not), named after the data folder."""
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "agata-tasks" / key


class TaskSandbox:
    """Contained starts for one service.

    Args:
        scope: names this service's runs (two services never reap each other's).
        task_user: user name for task processes when running as root ("" : none).
        task_dir: root of the task areas (see :func:`default_task_dir`).
        limits: the configuration's limits; a task's own values win.
    """

    def __init__(
        self, scope: str, *, task_user: str, task_dir: Path, limits: Limits | None = None
    ) -> None:
        user = resolve_task_user(task_user)
        self.containment: Containment = detect_containment(scope, task_user=user)
        self.launcher = AsyncioProcessLauncher(containment=self.containment)
        self.task_dir = task_dir
        self.limits = limits or Limits()

    @property
    def kind(self) -> ContainmentKind:
        return self.containment.kind

    def describe(self) -> str:
        limits = self.limits.as_dict()
        shown = ", ".join(f"{k}={v}" for k, v in limits.items()) or "none"
        return f"{self.containment.describe()}; default limits: {shown}"

    def limits_for(self, task: Limits | None) -> Limits:
        return self.limits.merged(task or Limits())

    def work_for(self, side: str, task_id: str, work: Path) -> Path:
        """The work folder :meth:`place` gives a side whose default work folder is
        ``work``."""
        if self.containment.task_user is None:
            return work
        return self.task_dir / side / f"task_{task_id}" / "work"

    def place(self, side: str, task_id: str, bundle: Path, work: Path) -> tuple[Path, Path]:
        """The bundle folder and work folder a side runs with: with a task user, a copy
        of ``bundle`` and a work folder it owns under the task dir; else ``bundle`` and
        ``work`` themselves (created)."""
        user = self.containment.task_user
        if user is None:
            work.mkdir(parents=True, exist_ok=True)
            return bundle, work
        area = self.task_dir / side / f"task_{task_id}"
        try:
            return prepare_area(self.task_dir, area, bundle, user)
        except OSError as exc:
            raise AgataError(
                ErrorCode.INTERNAL, f"cannot prepare the task's folder {area}: {exc}"
            ) from exc

    def reap(self, run_id: str, pgid: int | None = None) -> bool:
        """End what a previous life left of a run (its container, else its recorded
        process group); whether anything was left."""
        ended = False
        if run_id:
            ended = self.containment.reap(run_id) > 0
        if pgid is not None and pgid > 1:
            with contextlib.suppress(AgataError, OSError):
                ended = kill_process_group(pgid, token=run_id or None) or ended
        return ended
