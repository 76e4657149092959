"""``TaskSandbox``: what the cloud and the agent need to start contained task sides.

One per service, made at its start: it detects the containment (and says which in the
log and the health record), resolves the task user, prepares each side's area (a bundle
copy and a work folder the task user owns, see :mod:`agata.runtime.task_user`) and ends
what a killed previous life of the service left (:meth:`TaskSandbox.reap`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import tempfile
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from agata.errors import AgataError, ErrorCode
from agata.runtime.containment import Containment, ContainmentKind, detect_containment
from agata.runtime.environments import REQUIREMENTS_FILE, EnvironmentCache
from agata.runtime.limits import Limits
from agata.runtime.process import AsyncioProcessLauncher, kill_process_group
from agata.runtime.task_user import (
    check_interpreter,
    kept_area,
    prepare_area,
    resolve_task_user,
)

__all__ = ["TaskSandbox", "default_task_dir"]

logger = logging.getLogger(__name__)

#: A kept bundle copy of at most this many files and folders is checked on the event
#: loop (two stat calls each, ~0.3 ms in all): :meth:`TaskSandbox.place_kept`.
LOOP_CHECK_ENTRIES = 64


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
        index_options, env_timeout, env_max_bytes, allow_direct: of the task
            environments (:class:`~agata.runtime.environments.EnvironmentCache`), kept
            in ``<task_dir>/environments``.
        spare: keep a shell parked in the next run's cgroups (:mod:`agata.runtime.spare`):
            a start then skips the cgroup join (the agent's dispatch and failover).
    """

    def __init__(
        self,
        scope: str,
        *,
        task_user: str,
        task_dir: Path,
        limits: Limits | None = None,
        index_options: Sequence[str] = (),
        env_timeout: float = 600.0,
        env_max_bytes: int = 5 * 1024**3,
        allow_direct: bool = False,
        spare: bool = False,
    ) -> None:
        user = resolve_task_user(task_user)
        if user is not None:
            check_interpreter(user)
        self.containment: Containment = detect_containment(scope, task_user=user)
        self.launcher = AsyncioProcessLauncher(containment=self.containment, spare=spare)
        self.task_dir = task_dir
        self.limits = limits or Limits()
        self.environments = EnvironmentCache(
            task_dir / "environments",
            index_options=index_options,
            timeout=env_timeout,
            max_bytes=env_max_bytes,
            allow_direct=allow_direct,
        )
        #: Installer options for a build, fetched just before it (the agent's copy of
        #: the cloud's wheelhouse, :mod:`agata.edge.wheelhouse`); None: none.
        self.wheelhouse: Callable[[], Awaitable[list[str]]] | None = None
        self._areas: dict[Path, threading.Lock] = {}  # one place() at a time per area
        self._areas_guard = threading.Lock()

    @property
    def kind(self) -> ContainmentKind:
        return self.containment.kind

    def describe(self) -> str:
        limits = self.limits.as_dict()
        shown = ", ".join(f"{k}={v}" for k, v in limits.items()) or "none"
        return f"{self.containment.describe()}; default limits: {shown}"

    def limits_for(self, task: Limits | None) -> Limits:
        return self.limits.merged(task or Limits())

    def place(self, side: str, task_id: str, bundle: Path, work: Path) -> tuple[Path, Path]:
        """The bundle folder and work folder a side runs with: with a task user, a copy
        of ``bundle`` (the one an earlier run or :meth:`place` left, while neither it nor
        ``bundle`` changed: :func:`~agata.runtime.task_user.prepare_area`) and a work
        folder it owns under the task dir; else ``bundle`` and ``work`` themselves
        (created). Thread-safe: calls for one area wait for each other."""
        user = self.containment.task_user
        if user is None:
            work.mkdir(parents=True, exist_ok=True)
            return bundle, work
        area = self.task_dir / side / f"task_{task_id}"
        with self._areas_guard:
            lock = self._areas.setdefault(area, threading.Lock())
        try:
            with lock:
                return prepare_area(self.task_dir, area, bundle, user)
        except OSError as exc:
            raise AgataError(
                ErrorCode.INTERNAL, f"cannot prepare the task's folder {area}: {exc}"
            ) from exc

    def place_kept(
        self, side: str, task_id: str, bundle: Path, work: Path
    ) -> tuple[Path, Path] | None:
        """:meth:`place` when it has no copy to make and the kept copy is small enough to
        check on an event loop (:data:`LOOP_CHECK_ENTRIES`), else None (call
        :meth:`place` in a thread). Never waits: None while another call holds the area."""
        user = self.containment.task_user
        if user is None:
            return self.place(side, task_id, bundle, work)
        area = self.task_dir / side / f"task_{task_id}"
        with self._areas_guard:
            lock = self._areas.setdefault(area, threading.Lock())
        if not lock.acquire(blocking=False):
            return None
        try:
            return kept_area(self.task_dir, area, bundle, user, LOOP_CHECK_ENTRIES)
        except OSError:
            return None  # place() says why
        finally:
            lock.release()

    async def python_for(
        self, bundle: Path, progress: Callable[[str], None] | None = None
    ) -> str | None:
        """The interpreter a side of ``bundle`` runs with: its environment's when the
        bundle declares requirements (built now if missing, in a thread), else None
        (AGATA's own). ``progress`` is called on the event loop's thread. When the
        environment must be built and :attr:`wheelhouse` is set, the installer options
        it answers are added to that build. Raises AgataError with the reason when it
        cannot be built."""
        requirements = bundle / REQUIREMENTS_FILE
        if not requirements.is_file():
            return None
        try:
            text = requirements.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT, f"cannot read {REQUIREMENTS_FILE}: {exc}"
            ) from exc
        loop = asyncio.get_running_loop()

        def report(line: str) -> None:  # called in the build's thread
            if progress is not None:
                loop.call_soon_threadsafe(progress, line)

        options: list[str] = []
        if self.wheelhouse is not None and not self.environments.built(text):
            options = await self.wheelhouse()
        python = await asyncio.to_thread(self.environments.ensure, text, report, options)
        return str(python)

    async def prepare(self) -> None:
        """Park a spare start for the first task (with ``spare``; see
        :mod:`agata.runtime.spare`)."""
        await self.launcher.prepare()

    def close(self) -> None:
        """Once every side has ended: end the spare start, remove the service's empty
        cgroup folders."""
        self.launcher.close()
        self.containment.close()

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
