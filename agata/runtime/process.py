"""The OS boundary of the task runtime: spawn a process group, signal it, wait for it.

The supervisor (:mod:`agata.runtime.supervisor`) talks to processes only through
:class:`ProcessLauncher` and :class:`ProcessHandle`, so its state machine is tested with a
fake launcher and then once more with :class:`AsyncioProcessLauncher`, the real one.

Real processes are started with asyncio in a session (and so a process group) of their
own: signalling the group reaches every process the task started. On Linux the child asks
the kernel for ``SIGKILL`` when its parent dies (``PR_SET_PDEATHSIG``), so a task does not
outlive a supervisor that was killed without a chance to clean up. The kernel ties that
signal to the *thread* that forked the child: start tasks from the event loop's thread
and keep that thread alive as long as the tasks.

With a :class:`~agata.runtime.containment.Containment` the launcher also puts each run
in a container (a cgroup, or an environment marker) that ``setsid`` and double forks do
not leave, applies the run's limits and switches to the task user; the handle then
signals the whole container, not only the group. A restarted service ends what a
previous life left through the recorded run id (:meth:`Containment.reap`), or, for a
group started without containment, :func:`kill_process_group`.
"""

from __future__ import annotations

import abc
import asyncio
import ctypes
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from agata.errors import AgataError, ErrorCode
from agata.runtime.containment import MARK_ENV, Containment, RunContainer
from agata.runtime.limits import Limits
from agata.runtime.spare import SpareStart, usable_line

__all__ = [
    "ENV_ALLOWLIST",
    "AsyncioProcessLauncher",
    "ByteReader",
    "ProcessHandle",
    "ProcessLauncher",
    "group_members",
    "kill_process_group",
    "task_environment",
]

logger = logging.getLogger(__name__)

ENV_ALLOWLIST = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONIOENCODING",
        "PYTHONHASHSEED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONWARNINGS",
        "PYTHONUTF8",
    }
)
"""Variables of AGATA's own environment a task inherits (and ``LC_*``); nothing else."""

#: Seconds between a start taking the spare and the next spare's start: a little, so
#: that the fork is not in the way of the task's own exec; the join itself sleeps in
#: the kernel. (1 s was too long: the bench's starts come ~0.7 s apart and failover
#: follows a start by about a second, so they found no spare.)
SPARE_REFILL_SECONDS = 0.1
_PR_SET_PDEATHSIG = 1
_STREAM_LIMIT = 64 * 1024  # bytes buffered per pipe before the child has to wait


class ByteReader(Protocol):
    """The read side of a pipe (``asyncio.StreamReader`` is one)."""

    async def read(self, n: int = -1) -> bytes: ...


class ProcessHandle(abc.ABC):
    """One started process, leader of its own process group."""

    pid: int
    pgid: int
    stdout: ByteReader
    stderr: ByteReader
    run_id: str = ""  # the container's id ("" without containment): record it to reap

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait for the process to exit and return its status.

        The status follows ``Popen.returncode``: the exit code, or ``-N`` when the process
        was killed by signal ``N``. Waiting MUST be cancellable and MUST NOT stop the
        process; calling it again after the exit MUST return the same status at once.
        """

    @abc.abstractmethod
    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to every process of the group.

        Returns whether the group still existed. MUST NOT raise when it is gone.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Release the pipes (and the container) once the process has exited."""

    def limit_exceeded(self) -> str | None:
        """The limit the kernel enforced on the process tree, named; None if none or
        unknown. Meaningful once the process has exited, before :meth:`close`."""
        return None


class ProcessLauncher(abc.ABC):
    """Starts processes; the one thing the supervisor needs from the OS."""

    @abc.abstractmethod
    async def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        limits: Limits | None = None,
    ) -> ProcessHandle:
        """Start ``argv`` in ``cwd`` with exactly ``env`` as its environment (plus what
        the containment needs), within ``limits`` where the launcher enforces limits.

        The process MUST lead a new process group, with stdout and stderr as pipes and
        stdin closed (``/dev/null``). When it cannot be started this MUST raise
        :class:`AgataError` (``ErrorCode.INTERNAL``) saying why.
        """


def task_environment(
    extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a task process: the allowlisted variables of ``base`` (default
    ``os.environ``; see :data:`ENV_ALLOWLIST`), then the runtime's settings (no Flower
    telemetry, unbuffered output), then ``extra``. Secrets of AGATA's environment (bus
    and database URLs, tokens) are therefore never passed on."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if k in ENV_ALLOWLIST or k.startswith("LC_")}
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class _ExitWatchingProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Notices the exit itself: ``Process.wait()`` of Python 3.11 returns only once the
    pipes are closed too, which a grandchild holding them can delay forever."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class _AsyncioHandle(ProcessHandle):
    def __init__(
        self,
        transport: asyncio.SubprocessTransport,
        protocol: _ExitWatchingProtocol,
        container: RunContainer | None = None,
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._container = container
        self.run_id = container.run_id if container else ""
        self.pid = transport.get_pid()
        self.pgid = self.pid  # start_new_session: the child leads its own group
        assert protocol.stdout is not None and protocol.stderr is not None
        self.stdout = protocol.stdout
        self.stderr = protocol.stderr

    async def wait(self) -> int:
        await asyncio.shield(self._protocol.exited)
        code = self._transport.get_returncode()
        assert code is not None
        return code

    def signal_group(self, sig: int) -> bool:
        """Signal the group and, with containment, every process of the container
        (those that left the group by ``setsid`` or a double fork too)."""
        contained = False
        if self._container is not None:
            if sig == signal.SIGKILL and self._transport.get_returncode() is not None:
                contained = self._container.kill() > 0  # the leader is gone: end the rest
            else:
                contained = self._container.signal(sig)
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            return contained
        except PermissionError:  # the number now names someone else's group
            logger.warning("process group %d is no longer ours; not signalled", self.pgid)
            return contained
        return True

    def limit_exceeded(self) -> str | None:
        return self._container.limit_exceeded() if self._container else None

    def close(self) -> None:
        self._transport.close()
        if self._container is not None:
            self._container.release()


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking for SIGKILL when the parent dies, or None off Linux.

    Everything is looked up before the fork: the child only calls into libc.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        logger.warning("prctl unavailable: tasks will not die with their supervisor")
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sigkill)

    return preexec


@functools.cache
def _setpriv() -> str | None:
    """util-linux ``setpriv`` when it can set PDEATHSIG (Linux), else None.

    Probed once per process: the probe is a spawn (~4 ms), and every task start
    creates a launcher."""
    if not sys.platform.startswith("linux"):
        return None
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        probe = subprocess.run(
            [path, "--pdeathsig", "KILL", "--", "true"], capture_output=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return path if probe.returncode == 0 else None


class AsyncioProcessLauncher(ProcessLauncher):
    """Starts real processes with asyncio, each in a new session.

    Args:
        pdeathsig: on Linux, have the kernel SIGKILL the child when the thread that
            started it dies.
        containment: put each process tree in a container of its own, with the run's
            limits, as the containment's task user (None: a process group only).
    """

    def __init__(
        self,
        *,
        pdeathsig: bool = True,
        containment: Containment | None = None,
        spare: bool = False,
    ) -> None:
        self._pdeathsig = pdeathsig
        self._containment = containment
        # A parked shell in the next run's cgroups (agata.runtime.spare): cgroups only.
        self._spare_wanted = spare and containment is not None and bool(containment.bases)
        self._spare: SpareStart | None = None
        self._refill: asyncio.Task[None] | None = None
        needs_setpriv = pdeathsig or (containment is not None and containment.task_user)
        self._setpriv = _setpriv() if needs_setpriv else None
        if containment is not None and containment.task_user and self._setpriv is None:
            raise AgataError(
                ErrorCode.INTERNAL, "a task user needs util-linux setpriv, which is missing"
            )

    def _wrap(self, argv: list[str], container: RunContainer | None) -> list[str]:
        """Prefix ``argv`` with the shell prologue (cgroups, rlimits) and setpriv
        (PDEATHSIG, task user). Both exec: the task keeps the child's pid."""
        argv = self._with_setpriv(argv)
        prologue = container.prologue() if container is not None else []
        if prologue:
            script = "\n".join([*prologue, 'exec "$@"'])
            argv = ["/bin/sh", "-c", script, "agata-task", *argv]
        return argv

    def _with_setpriv(self, argv: list[str]) -> list[str]:
        if self._setpriv is not None:
            options = ["--pdeathsig", "KILL"] if self._pdeathsig else []
            user = self._containment.task_user if self._containment else None
            if user is not None:
                options = [*user.setpriv_options(), *options]
            # setpriv sets PDEATHSIG after switching users (a switch would clear it)
            # and execs the task: no preexec_fn, so CPython can vfork.
            argv = [self._setpriv, *options, "--", *argv]
        return argv

    # -- the spare start (agata.runtime.spare) ------------------------------------------

    async def prepare(self) -> None:
        """Park a spare for the next start now (when this launcher keeps one)."""
        if self._spare_wanted and self._spare is None:
            await self._make_spare()

    async def _make_spare(self) -> None:
        assert self._containment is not None
        loop = asyncio.get_running_loop()
        try:
            spare = await SpareStart.make(
                self._containment,
                lambda: _ExitWatchingProtocol(_STREAM_LIMIT, loop),
            )
        except OSError as exc:
            logger.warning("no spare start parked (%s); tasks start the ordinary way", exc)
            return
        if self._spare is not None or not self._spare_wanted:  # closed or made meanwhile
            spare.discard()
            return
        self._spare = spare

    def _refill_soon(self) -> None:
        """Park the next spare after a short pause (see SPARE_REFILL_SECONDS)."""
        if self._spare_wanted and (self._refill is None or self._refill.done()):
            self._refill = asyncio.get_running_loop().create_task(self._refill_later())

    async def _refill_later(self) -> None:
        await asyncio.sleep(SPARE_REFILL_SECONDS)
        await self._make_spare()

    def _take_spare(
        self, argv: list[str], cwd: Path, env: Mapping[str, str], limits: Limits | None
    ) -> ProcessHandle | None:
        """Start ``argv`` in the spare (None: there is none that can carry it)."""
        spare = self._spare
        if spare is None or not usable_line(argv, env) or not cwd.is_dir():
            return None
        self._spare = None
        self._refill_soon()
        if not spare.alive:
            spare.discard()
            return None
        try:
            spare.launch(self._with_setpriv(argv), cwd=cwd, env=env, limits=limits)
        except (OSError, RuntimeError) as exc:
            logger.warning("the spare start failed (%s); starting the ordinary way", exc)
            spare.discard()
            return None
        handle = _AsyncioHandle(spare.transport, spare.protocol, spare.container)  # type: ignore[arg-type]
        logger.debug("started pid %d in a spare (group %d): %s", handle.pid, handle.pgid, argv)
        return handle

    @property
    def spare_pid(self) -> int | None:
        """The pid of the parked spare (the next start's pid), if one is parked."""
        return self._spare.transport.get_pid() if self._spare is not None else None

    def close(self) -> None:
        """End the spare, if one is parked (before the containment's folders go)."""
        self._spare_wanted = False
        if self._refill is not None:
            self._refill.cancel()
        if self._spare is not None:
            self._spare.discard()
            self._spare = None

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        limits: Limits | None = None,
    ) -> ProcessHandle:
        if not argv:
            raise AgataError(ErrorCode.INTERNAL, "cannot start a process without a command")
        preexec = None
        if self._setpriv is not None and shutil.which(argv[0]) is None:
            # setpriv would only fail after the spawn
            raise AgataError(
                ErrorCode.INTERNAL, f"cannot start {argv[0]!r}: not an executable program"
            )
        if self._setpriv is None and self._pdeathsig:
            preexec = _pdeathsig_preexec()
        if self._spare_wanted:
            spared = self._take_spare(list(argv), cwd, env, limits)
            if spared is not None:
                return spared
            self._refill_soon()
        container = None
        if self._containment is not None:
            try:
                container = self._containment.new_run(limits)
            except OSError as exc:
                raise AgataError(
                    ErrorCode.INTERNAL, f"cannot make the task's container: {exc}"
                ) from exc
            env = {**env, **container.env()}
        argv = self._wrap(list(argv), container)
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _ExitWatchingProtocol(_STREAM_LIMIT, loop),
                *argv,
                cwd=str(cwd),
                env=dict(env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            if container is not None:
                container.release()
            raise AgataError(ErrorCode.INTERNAL, f"cannot start {argv[0]!r}: {exc}") from exc
        handle = _AsyncioHandle(transport, protocol, container)
        logger.debug("started pid %d (group %d): %s", handle.pid, handle.pgid, argv)
        return handle


def group_members(pgid: int) -> list[int] | None:
    """The pids whose process group is ``pgid`` (zombies left out), read from ``/proc``.

    Returns None where ``/proc`` is not available.
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile, or not readable
            continue
        # "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _has_token(pid: int, token: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARK_ENV}={token}".encode() in environ.split(b"\0")


def kill_process_group(pgid: int, sig: int = signal.SIGKILL, *, token: str | None = None) -> bool:
    """Signal a process group left behind (e.g. by a previous run of the service).

    Checks first that the group still has a live member and, when ``token`` is given (the
    run id of a ``process-marker`` container recorded with the pgid), that one of its live
    members carries that marker in its environment — a recycled pgid belonging to someone
    else is left alone. Returns whether the signal was sent.
    """
    if pgid <= 1:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"refusing to signal process group {pgid}")
    members = group_members(pgid)
    if members is not None and not members:  # gone, or only zombies left
        return False
    if token is not None and members is not None:
        if not any(_has_token(pid, token) for pid in members):
            logger.info("process group %d is not a task of ours; not signalled", pgid)
            return False
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        logger.warning("process group %d belongs to another user; not signalled", pgid)
        return False
    logger.info("sent signal %s to leftover process group %d", signal.Signals(sig).name, pgid)
    return True
