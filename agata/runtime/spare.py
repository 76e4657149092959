"""A spare start: a shell parked in a fresh run cgroup, ready to become the next task.

Joining a cgroup is the slow part of a contained start on cgroup v1: the child's
``echo $$ > cgroup.procs`` and its first exec there cost as much as the interpreter
start itself (docs/benchmarks.md, "Dispatch and failover: where the time goes", has the
figures). A launcher made with ``spare=True`` pays it ahead of time:
it keeps one ``/bin/sh`` that has already joined the cgroups of a new run and waits on
its stdin. A start hands that shell one line::

    cd -- <cwd> || exit 126; exec </dev/null; <rlimits>; exec env -i -- <env> <argv>

and the task runs in the shell's process (same pid, same new session, stdout and
stderr pipes, stdin ``/dev/null``), with exactly ``env`` (``env -i``) and the run's
limits written to its cgroup just before. A new spare is made right after, off the
start's path.

What a spare does not change: the container is a run's like any other (the task cannot
leave it; a restarted service reaps it with the scope's other runs, and a spare whose
service died reads end-of-file and exits). A start the line cannot carry (a newline in
an argument or a variable, a program name with ``=``) or a spare that is gone falls back
to an ordinary start. Only for cgroup containment: the process marker lives in the
environment, which the spare's shell could not take on after its start.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from agata.runtime.containment import Containment, RunContainer
from agata.runtime.limits import Limits

__all__ = ["SpareStart", "usable_line"]

logger = logging.getLogger(__name__)

_ENV = shutil.which("env") or "/usr/bin/env"


def usable_line(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    """Whether a spare's one line can carry this start exactly."""
    items = [*argv, *env.keys(), *env.values()]
    if any("\n" in item or "\0" in item for item in items):
        return False
    return bool(argv) and "=" not in argv[0] and all("=" not in k and k for k in env)


class SpareStart:
    """One parked shell in the container of a future run (see the module docstring)."""

    def __init__(
        self,
        transport: asyncio.SubprocessTransport,
        protocol: asyncio.subprocess.SubprocessStreamProtocol,
        container: RunContainer,
    ) -> None:
        self.transport = transport
        self.protocol = protocol
        self.container = container

    @classmethod
    async def make(
        cls,
        containment: Containment,
        protocol_factory: Callable[[], asyncio.subprocess.SubprocessStreamProtocol],
    ) -> SpareStart:
        """Start a shell that joins a new run's cgroups and waits for its line.

        ``protocol_factory`` builds the protocol the task's handle will read through (a
        callable of no arguments). Raises OSError when it cannot be started."""
        container = containment.new_run(None)
        joins = container.prologue(rlimits=False)
        script = "\n".join([*joins, "read -r line || exit 0", 'eval "$line"'])
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                protocol_factory,
                "/bin/sh",
                "-c",
                script,
                "agata-spare",
                cwd="/",
                env={},
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except (OSError, ValueError):
            container.release()
            raise
        return cls(transport, protocol, container)

    @property
    def alive(self) -> bool:
        """Running, not merely unreaped: a killed spare keeps no return code until the
        event loop reaps it, and a line sent to it then would start nothing."""
        if self.transport.get_returncode() is not None:
            return False
        try:
            stat = Path(f"/proc/{self.transport.get_pid()}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")

    def launch(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], limits: Limits | None
    ) -> None:
        """Turn the spare into the task ``argv`` (already wrapped in setpriv): set the
        run's limits on its cgroups, send the line, close its stdin."""
        self.container.limits = limits or Limits()
        self.container.create()  # the folders exist: this writes the limits
        assignments = [f"{key}={value}" for key, value in env.items()]
        line = "; ".join(
            [
                f"cd -- {shlex.quote(str(cwd))} || exit 126",
                "exec </dev/null",
                *self.container.rlimit_lines(),
                "exec " + shlex.join([_ENV, "-i", "--", *assignments, *argv]),
            ]
        )
        stdin = self.protocol.stdin
        assert stdin is not None
        stdin.write(line.encode() + b"\n")
        stdin.close()

    def discard(self) -> None:
        """End the shell and remove its container (it never ran a task)."""
        self.transport.close()
        self.container.release()
