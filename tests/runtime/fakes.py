"""A fake OS boundary: processes that exist only as two byte streams and a future."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agata.errors import AgataError, ErrorCode
from agata.runtime.limits import Limits
from agata.runtime.process import ProcessHandle, ProcessLauncher


class FakeHandle(ProcessHandle):
    """A process the test drives: it writes lines, exits, and reacts to signals.

    ``ends_on`` are the signals it dies of (SIGKILL always); ``eof_on_exit=False``
    models a grandchild outside the group that keeps the pipes open.
    """

    def __init__(
        self,
        pid: int,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        *,
        ends_on: frozenset[int] = frozenset({signal.SIGTERM}),
        eof_on_exit: bool = True,
    ) -> None:
        self.pid = pid
        self.pgid = pid
        self.argv = list(argv)
        self.cwd = cwd
        self.env = dict(env)
        self.out = asyncio.StreamReader()
        self.err = asyncio.StreamReader()
        self.stdout = self.out
        self.stderr = self.err
        self.signals: list[int] = []
        self.signals_after_exit: list[int] = []
        self.ends_on = ends_on | {signal.SIGKILL}
        self.eof_on_exit = eof_on_exit
        self._status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._group_alive = True

    @property
    def exited(self) -> bool:
        return self._status.done()

    def write(self, text: str, stream: str = "stdout") -> None:
        reader = self.out if stream == "stdout" else self.err
        reader.feed_data(text.encode())

    def send(self, **record: Any) -> None:
        self.write(json.dumps(record) + "\n")

    def exit(self, status: int) -> None:
        if self.exited:
            return
        if self.eof_on_exit:
            self.out.feed_eof()
            self.err.feed_eof()
        self._status.set_result(status)

    async def wait(self) -> int:
        return await asyncio.shield(self._status)

    def signal_group(self, sig: int) -> bool:
        (self.signals_after_exit if self.exited else self.signals).append(sig)
        if not self._group_alive:
            return False
        if sig in self.ends_on:
            self.exit(-sig)
        if sig == signal.SIGKILL:
            self._group_alive = False
        return True


class FakeLauncher(ProcessLauncher):
    """Hands out FakeHandles; ``fail`` makes the next spawns fail."""

    def __init__(self, **handle_options: Any) -> None:
        self.handles: list[FakeHandle] = []
        self.fail = False
        self.gate: asyncio.Event | None = None  # when set, spawn waits for it
        self.handle_options = handle_options
        self.spawned = asyncio.Event()

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        limits: Limits | None = None,
    ) -> ProcessHandle:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise AgataError(ErrorCode.INTERNAL, "cannot start: no such interpreter")
        handle = FakeHandle(1000 + len(self.handles), argv, cwd, env, **self.handle_options)
        self.handles.append(handle)
        self.spawned.set()
        return handle
