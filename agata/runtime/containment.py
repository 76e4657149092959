"""Containment of a task's process tree: which processes are the task's, and ending them.

A process group alone does not hold a task: ``setsid`` or a double fork leaves it, and
a process left that way outlives stop and a SIGKILL of the service. This module puts
every run into a container the task cannot leave and that survives the service:

- ``cgroup-v2`` / ``cgroup-v1``: a cgroup per run (``<own cgroup>/agata-<scope>/run-<id>``;
  on v1 in the ``pids`` hierarchy, and ``memory``/``cpu`` when mounted and writable). A
  child joins it before it execs the task (a ``/bin/sh`` prologue writes its own pid to
  ``cgroup.procs``: no ``preexec_fn``, so CPython can still vfork). The kernel keeps every
  descendant in it, whatever it calls; ending the run kills every member; a restarted
  service finds the cgroup by its recorded id and ends what is left. Memory, process and
  CPU limits are the cgroup's.
- ``process-marker`` (no usable cgroup): every process of the run carries a marker in
  its environment (``AGATA_CONTAINER``, a random id that grants nothing); ending the run
  or reaping after a restart kills every process carrying it, in any session or group.
  Weaker: a process that replaces its environment (``execve`` with a new one) escapes.
  Limits are then per-process ``setrlimit`` values (see :mod:`agata.runtime.limits`).

The service calls :func:`detect_containment` once at start and logs
:meth:`Containment.describe`; the same text goes into its health record.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import os
import re
import secrets
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from agata.runtime.limits import Limits
from agata.runtime.task_user import TaskUser

__all__ = ["MARK_ENV", "Containment", "ContainmentKind", "RunContainer", "detect_containment"]

logger = logging.getLogger(__name__)

MARK_ENV = "AGATA_CONTAINER"
"""Environment variable marking the processes of one run (``process-marker`` only)."""

CGROUP_ROOT = Path("/sys/fs/cgroup")
_RUN_ID = re.compile(r"[0-9a-f]{32}\Z")
_V1_CONTROLLERS = ("pids", "memory", "cpu")
_KILL_ROUNDS = 200  # rounds of "kill every member" before giving up (10 ms apart)
_PERIOD_US = 100_000


class ContainmentKind(enum.StrEnum):
    CGROUP_V2 = "cgroup-v2"
    CGROUP_V1 = "cgroup-v1"
    PROCESS_MARKER = "process-marker"


def _own_cgroups() -> dict[str, str]:
    """``/proc/self/cgroup`` as {controller (or "" for v2): path}."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                paths[controller] = path
    return paths


def _usable(folder: Path) -> bool:
    """Whether a cgroup can be made and removed under ``folder``."""
    probe = folder / f"agata-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return (probe / "cgroup.procs").exists()
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
    except OSError as exc:
        logger.warning("cannot write %s to %s: %s", value, path, exc)
        return False
    return True


def _read_counter(path: Path, key: str) -> int:
    """The value of ``key`` in a flat-keyed cgroup file (``pids.events``), 0 if absent."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def _pids_in(folder: Path) -> list[int]:
    try:
        return [int(p) for p in (folder / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _marked(mark: str) -> list[int]:
    """Live pids whose environment carries ``MARK_ENV=mark``."""
    needle = f"{MARK_ENV}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _kill_all(pids: list[int], sig: int) -> bool:
    sent = False
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            sent = True
    return sent


class RunContainer:
    """The container of one run. Made by :meth:`Containment.new_run` or found again by
    :meth:`Containment.find` after a restart (same ``run_id``)."""

    def __init__(self, containment: Containment, run_id: str, limits: Limits) -> None:
        self.containment = containment
        self.run_id = run_id
        self.limits = limits
        self.folders = [base / f"run-{run_id}" for base in containment.bases.values()]

    # -- starting -------------------------------------------------------------------

    def create(self) -> None:
        """Make the cgroups and set the limits (nothing to make for process-marker)."""
        c = self.containment
        for controller, folder in zip(c.bases, self.folders, strict=True):
            folder.mkdir(exist_ok=True)
            self._set_limits(controller, folder)

    def _set_limits(self, controller: str, folder: Path) -> None:
        lim, kind = self.limits, self.containment.kind
        if kind is ContainmentKind.CGROUP_V1:
            if controller == "pids" and lim.pids is not None:
                _write(folder / "pids.max", str(lim.pids))
            if controller == "memory" and lim.memory_mb is not None:
                size = str(lim.memory_mb * 1024 * 1024)
                _write(folder / "memory.limit_in_bytes", size)
                if (folder / "memory.memsw.limit_in_bytes").exists():  # no escape to swap
                    _write(folder / "memory.memsw.limit_in_bytes", size)
            if controller == "cpu" and lim.cpu_cores is not None:
                _write(folder / "cpu.cfs_period_us", str(_PERIOD_US))
                _write(folder / "cpu.cfs_quota_us", str(int(lim.cpu_cores * _PERIOD_US)))
        elif kind is ContainmentKind.CGROUP_V2:
            if lim.pids is not None and "pids" in self.containment.controllers:
                _write(folder / "pids.max", str(lim.pids))
            if lim.memory_mb is not None and "memory" in self.containment.controllers:
                _write(folder / "memory.max", str(lim.memory_mb * 1024 * 1024))
                with contextlib.suppress(OSError):
                    (folder / "memory.swap.max").write_text("0")
            if lim.cpu_cores is not None and "cpu" in self.containment.controllers:
                _write(folder / "cpu.max", f"{int(lim.cpu_cores * _PERIOD_US)} {_PERIOD_US}")

    def env(self) -> dict[str, str]:
        """What the run's environment needs for the containment (its marker, or nothing)."""
        if self.containment.kind is ContainmentKind.PROCESS_MARKER:
            return {MARK_ENV: self.run_id}
        return {}

    def prologue(self, *, rlimits: bool = True) -> list[str]:
        """Shell commands the child runs before it execs the task: join the cgroups,
        set the per-process limits the cgroups do not cover (unless not ``rlimits``)."""
        lines = [f'echo $$ > "{folder}/cgroup.procs" || exit 126' for folder in self.folders]
        return [*lines, *self.rlimit_lines()] if rlimits else lines

    def rlimit_lines(self) -> list[str]:
        """Shell commands setting the per-process limits the cgroups do not cover."""
        lines: list[str] = []
        lim, enforced = self.limits, self.containment.enforced
        if lim.open_files is not None:
            lines.append(f"ulimit -n {lim.open_files} || exit 126")
        if lim.memory_mb is not None and "memory" not in enforced:
            lines.append(f"ulimit -v {lim.memory_mb * 1024} || exit 126")  # RLIMIT_AS
        if lim.pids is not None and "pids" not in enforced:
            lines.append(f"ulimit -p {lim.pids} || exit 126")  # RLIMIT_NPROC, per user
        return lines

    # -- watching and ending --------------------------------------------------------

    def members(self) -> list[int]:
        """The live processes of the run."""
        if not self.folders:
            return _marked(self.run_id)
        return _pids_in(self.folders[0])

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to every process of the run; whether there was one."""
        return _kill_all(self.members(), sig)

    def kill(self) -> int:
        """SIGKILL every process of the run until none is left (bounded); returns how
        many processes were signalled. A cgroup-v2 with ``cgroup.kill`` does it at once."""
        killed = 0
        for _ in range(_KILL_ROUNDS):
            pids = self.members()
            if not pids:
                return killed
            kill_file = self.folders[0] / "cgroup.kill" if self.folders else None
            if kill_file is not None and kill_file.exists():
                _write(kill_file, "1")
            _kill_all(pids, signal.SIGKILL)
            killed += len(pids)
            time.sleep(0.01)
        logger.error("run %s: processes still alive after SIGKILL: %s", self.run_id, pids)
        return killed

    def limit_exceeded(self) -> str | None:
        """The limit the kernel enforced on this run, named, or None."""
        lim, kind = self.limits, self.containment.kind
        for controller, folder in zip(self.containment.bases, self.folders, strict=True):
            if kind is ContainmentKind.CGROUP_V1 and controller == "memory":
                oom = _read_counter(folder / "memory.oom_control", "oom_kill")
                if oom > 0 or _read_counter(folder / "memory.stat", "total_oom_kill") > 0:
                    return f"memory limit of {lim.memory_mb} MiB exceeded (cgroup memory)"
            if kind is ContainmentKind.CGROUP_V2 and "memory" in self.containment.controllers:
                if _read_counter(folder / "memory.events", "oom_kill") > 0:
                    return f"memory limit of {lim.memory_mb} MiB exceeded (cgroup memory.max)"
            if controller in ("pids", "") and lim.pids is not None:
                if _read_counter(folder / "pids.events", "max") > 0:
                    return f"process limit of {lim.pids} reached (cgroup pids.max)"
        return None

    def release(self) -> None:
        """End what is left and remove the cgroups (retried while the kernel empties
        them)."""
        self.kill()
        for folder in self.folders:
            for _ in range(100):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
            else:
                logger.warning("cgroup %s could not be removed", folder)


class Containment:
    """How this service contains its task processes (see the module docstring).

    Args:
        kind: what :func:`detect_containment` found.
        bases: controller (v1) or "" (v2) → the folder holding this scope's run cgroups.
        controllers: controllers whose limits the cgroups enforce.
        task_user: the user task processes run as (None: this service's own user).
    """

    def __init__(
        self,
        kind: ContainmentKind,
        bases: Mapping[str, Path] | None = None,
        controllers: frozenset[str] = frozenset(),
        task_user: TaskUser | None = None,
    ) -> None:
        self.kind = kind
        self.bases = dict(bases or {})
        self.controllers = controllers
        self.task_user = task_user

    @property
    def enforced(self) -> frozenset[str]:
        """Limits the kernel enforces on the whole tree (``memory``, ``pids``, ``cpu``)."""
        return self.controllers

    def describe(self) -> str:
        """One line for the start-up log and the health record."""
        user = f"task user {self.task_user.name}" if self.task_user else "task user: same as AGATA"
        if self.kind is ContainmentKind.PROCESS_MARKER:
            detail = "no usable cgroup: environment marker + setrlimit (weaker)"
        else:
            detail = f"cgroup limits: {', '.join(sorted(self.controllers)) or 'none'}"
        return f"containment {self.kind} ({detail}); {user}"

    def new_run(self, limits: Limits | None = None) -> RunContainer:
        container = RunContainer(self, secrets.token_hex(16), limits or Limits())
        container.create()
        return container

    def find(self, run_id: str) -> RunContainer | None:
        """The container of a run recorded by a previous life of the service."""
        if not _RUN_ID.match(run_id):
            return None
        return RunContainer(self, run_id, Limits())

    def reap(self, run_id: str) -> int:
        """End what is left of a recorded run; returns how many processes were killed."""
        container = self.find(run_id)
        if container is None:
            return 0
        killed = container.kill()
        container.release()
        if killed:
            logger.warning("ended %d leftover process(es) of run %s", killed, run_id)
        return killed

    def close(self) -> None:
        """Remove this scope's cgroup folders when no run is left in them (a service
        that stops cleanly leaves nothing in the cgroup tree)."""
        for base in self.bases.values():
            with contextlib.suppress(OSError):
                base.rmdir()

    def reap_all(self) -> int:
        """End every run cgroup of this scope (a service that is alone on its data
        folder, at start). Process-marker runs are found by :meth:`reap` only."""
        killed = 0
        for base in self.bases.values():
            with contextlib.suppress(OSError):
                for folder in base.iterdir():
                    if folder.is_dir() and folder.name.startswith("run-"):
                        killed += self.reap(folder.name[4:])
        return killed


def _scope_name(scope: str) -> str:
    return "agata-" + hashlib.sha256(scope.encode()).hexdigest()[:12]


def detect_containment(
    scope: str, *, task_user: TaskUser | None = None, root: Path = CGROUP_ROOT
) -> Containment:
    """Find the best containment this machine allows.

    ``scope`` names this service's runs (e.g. ``"edge:" + data folder``) so two services
    on one machine never reap each other's cgroups.
    """
    name = _scope_name(scope)
    own = _own_cgroups()
    if (root / "cgroup.controllers").is_file() and "" in own:  # pure cgroup v2
        base = root / own[""].lstrip("/") / name
        with contextlib.suppress(OSError):
            base.mkdir(exist_ok=True)
        if base.is_dir() and _usable(base):
            available = set((base.parent / "cgroup.subtree_control").read_text().split())
            wanted = [c for c in ("pids", "memory", "cpu") if c in available]
            enabled = {c for c in wanted if _write(base / "cgroup.subtree_control", f"+{c}")}
            return Containment(ContainmentKind.CGROUP_V2, {"": base}, frozenset(enabled), task_user)
    bases: dict[str, Path] = {}
    for controller in _V1_CONTROLLERS:
        mount = root / controller
        if controller not in own or not (mount / "cgroup.procs").exists():
            continue
        base = mount / own[controller].lstrip("/") / name
        with contextlib.suppress(OSError):
            base.mkdir(exist_ok=True)
        if base.is_dir() and _usable(base):
            bases[controller] = base
    if "pids" in bases:  # membership is read from the first hierarchy: pids
        ordered = {"pids": bases.pop("pids"), **bases}
        return Containment(ContainmentKind.CGROUP_V1, ordered, frozenset(ordered), task_user)
    return Containment(ContainmentKind.PROCESS_MARKER, task_user=task_user)
