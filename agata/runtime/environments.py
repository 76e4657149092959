"""Python environments for tasks that declare their dependencies (``requirements.txt``).

A bundle holding ``requirements.txt`` runs in an environment built for exactly that set:
the key is a hash of the *normalised* requirements (comments and blank lines dropped,
names lower-cased, sorted) and of the interpreter's version and platform, so every task
and run needing the same set shares one environment. Building:

- with ``uv`` (the ``uv`` wheel ships the binary; ``python -m uv``), ``venv`` + ``pip``
  when uv is missing; index options (``--index-url``, ``--find-links``, ``--no-index``)
  come from the configuration, never from the bundle;
- atomically: into ``.build-<key>-<random>`` beside the cache, renamed to ``<key>`` only
  once complete (a ``.complete`` file inside). A half-built folder is never used and is
  removed on failure (an installer error, the time limit, a full disk);
- once under concurrency: an exclusive ``flock`` on ``<key>.lock`` while building; a
  second caller waits for it and then finds the environment made;
- within ``timeout`` seconds (the installer is killed past it);
- least recently used environments are removed when the cache grows past ``max_bytes``
  (the one just used is kept).

Refused in ``requirements.txt`` unless ``allow_direct`` is set: options (``-e``,
``--index-url``, ``-r``...), URLs, direct references (``name @ url``) and local paths.

Every environment can import ``agata.runtime.TaskReporter``: a copy of the reporter
module (standard library only) is installed into it as a package ``agata`` holding
``agata.runtime`` and nothing else — a task gets the protocol, not AGATA.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agata.errors import AgataError, ErrorCode
from agata.runtime import reporter

__all__ = ["REQUIREMENTS_FILE", "EnvironmentCache", "normalize_requirements"]

logger = logging.getLogger(__name__)

REQUIREMENTS_FILE = "requirements.txt"
_COMPLETE = ".complete"
_LAST_USED = ".last-used"
_TAIL_CHARS = 1500
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_RUNTIME_INIT = '''"""The task runtime's protocol for task environments (a copy; see agata docs)."""

from agata.runtime.reporter import TaskReporter

__all__ = ["TaskReporter"]
'''

Progress = Callable[[str], None]


def normalize_requirements(text: str, *, allow_direct: bool = False) -> list[str]:
    """The requirement lines of ``text``, normalised (sorted, unique, names lower-case).

    Raises INVALID_ARGUMENT naming the line for an option, URL, direct reference or
    local path unless ``allow_direct``.
    """
    lines: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        line = " ".join(line.split())
        requirement = line.split(";", 1)[0]
        direct = (
            line.startswith(("-", ".", "/", "~"))
            or "://" in line
            or "@" in requirement
            or "/" in requirement
            or "\\" in requirement
        )
        if direct and not allow_direct:
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT,
                f"{REQUIREMENTS_FILE} line {number} ({line[:80]!r}): options, URLs and "
                "local paths are refused (the cloud's configuration may allow them)",
            )
        name = _NAME.match(requirement)
        if name is None and not direct:
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT,
                f"{REQUIREMENTS_FILE} line {number} ({line[:80]!r}): not a requirement",
            )
        if name is not None and not direct:
            line = name.group().lower().replace("_", "-") + line[name.end() :]
        lines.add(line)
    return sorted(lines)


def _size(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _readable_by_all(folder: Path) -> None:
    """Folders 0755, files readable by all (executables executable by all)."""
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, 0o755)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _TAIL_CHARS else "…" + text[-_TAIL_CHARS:]


class EnvironmentCache:
    """Environments under ``root`` (see the module docstring).

    Args:
        root: the cache folder (made 0755: task users run the environments' pythons).
        index_options: installer options, e.g. ``["--no-index", "--find-links", dir]``.
        timeout: seconds one build may take.
        max_bytes: the cache's size bound (0: unbounded).
        allow_direct: accept URLs, options and paths in requirements.
        use_uv: False forces the pip fallback (tests, machines without the uv wheel).
    """

    def __init__(
        self,
        root: Path,
        *,
        index_options: Sequence[str] = (),
        timeout: float = 600.0,
        max_bytes: int = 5 * 1024**3,
        allow_direct: bool = False,
        use_uv: bool = True,
    ) -> None:
        self.root = root
        self.index_options = list(index_options)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.allow_direct = allow_direct
        self.uv = self._find_uv() if use_uv else None

    @staticmethod
    def _find_uv() -> str | None:
        try:
            import uv  # the PyPI wheel that ships the binary

            found: str = uv.find_uv_bin()
            return found
        except (ImportError, FileNotFoundError):
            return shutil.which("uv")

    def key(self, requirements: Sequence[str]) -> str:
        python = f"{platform.python_implementation()}-{platform.python_version()}"
        text = "\n".join([python, sys.platform, platform.machine(), *requirements])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def built(self, requirements_text: str) -> bool:
        """Whether the environment for these requirements exists (complete). Raises
        INVALID_ARGUMENT for refused lines."""
        requirements = normalize_requirements(requirements_text, allow_direct=self.allow_direct)
        return (self.root / self.key(requirements) / _COMPLETE).is_file()

    def ensure(
        self,
        requirements_text: str,
        progress: Progress | None = None,
        extra_options: Sequence[str] = (),
    ) -> Path:
        """The interpreter of the environment for these requirements, built if missing
        (``extra_options``: installer options for this build, after the configured ones,
        e.g. the agent's copy of the cloud's wheelhouse).

        Blocking (run it in a thread). Raises INVALID_ARGUMENT for refused lines,
        INTERNAL with the installer's tail when the build fails or takes too long.
        """
        say = progress or (lambda _text: None)
        requirements = normalize_requirements(requirements_text, allow_direct=self.allow_direct)
        key = self.key(requirements)
        final = self.root / key
        if not (final / _COMPLETE).is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o755)
            with open(self.root / f"{key}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one build per key, whoever asks
                if not (final / _COMPLETE).is_file():
                    self._build(final, requirements, say, list(extra_options))
        (final / _LAST_USED).touch()
        self._evict(keep=final)
        return final / "bin" / "python"

    def _build(
        self, final: Path, requirements: list[str], say: Progress, options: list[str]
    ) -> None:
        began = time.monotonic()
        staging = self.root / f".build-{final.name}-{secrets.token_hex(4)}"
        say(f"installing {len(requirements)} package(s) into environment {final.name[:12]}")
        try:
            self._create(staging, requirements, options)
            self._install_runtime(staging)
            (staging / "requirements.txt").write_text("\n".join(requirements) + "\n")
            _readable_by_all(staging)  # task users run it, whatever the umask was
            (staging / _COMPLETE).write_text(f"{time.time()}\n")
            shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover of a crash
            os.rename(staging, final)
        except OSError as exc:  # e.g. the disk is full
            raise AgataError(
                ErrorCode.INTERNAL, f"cannot build the task's environment: {exc}"
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        say(f"environment {final.name[:12]} ready in {time.monotonic() - began:.1f} s")

    def _run(self, argv: list[str], what: str, deadline: float) -> None:
        left = max(deadline - time.monotonic(), 1.0)
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=left, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise AgataError(
                ErrorCode.INTERNAL, f"{what} took longer than the {self.timeout:g} s allowed"
            ) from None
        if done.returncode != 0:
            raise AgataError(
                ErrorCode.INTERNAL,
                f"{what} failed (exit {done.returncode}): {_tail(done.stderr or done.stdout)}",
            )

    def _create(self, folder: Path, requirements: list[str], options: list[str]) -> None:
        deadline = time.monotonic() + self.timeout
        listing = folder.with_name(folder.name + ".txt")
        listing.write_text("\n".join(requirements) + "\n")
        python = str(folder / "bin" / "python")
        if self.uv is not None:
            create = [self.uv, "venv", "--quiet", "--python", sys.executable, str(folder)]
            install = [self.uv, "pip", "install", "--quiet", "--python", python]
        else:
            create = [sys.executable, "-m", "venv", str(folder)]
            install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        try:
            self._run(create, "creating the environment", deadline)
            if requirements:
                argv = [*install, *self.index_options, *options, "-r", str(listing)]
                self._run(argv, "installing the requirements", deadline)
        finally:
            listing.unlink(missing_ok=True)

    @staticmethod
    def _install_runtime(folder: Path) -> None:
        """Put ``agata.runtime.TaskReporter`` (a copy of the reporter) into the env."""
        sites = sorted((folder / "lib").glob("python*/site-packages"))
        if not sites:
            raise AgataError(ErrorCode.INTERNAL, f"no site-packages in {folder}")
        package = sites[0] / "agata" / "runtime"
        package.mkdir(parents=True)
        (package.parent / "__init__.py").write_text('"""Only the task protocol of AGATA."""\n')
        (package / "__init__.py").write_text(_RUNTIME_INIT)
        shutil.copyfile(reporter.__file__, package / "reporter.py")

    def _evict(self, keep: Path) -> None:
        if self.max_bytes <= 0:
            return
        complete = [p for p in self.root.iterdir() if (p / _COMPLETE).is_file()]
        sizes = {p: _size(p) for p in complete}
        total = sum(sizes.values())

        def last_used(folder: Path) -> float:
            try:
                return (folder / _LAST_USED).stat().st_mtime
            except OSError:
                return 0.0

        for folder in sorted(complete, key=last_used):
            if total <= self.max_bytes:
                break
            if folder == keep:
                continue
            logger.info("evicting task environment %s (%d bytes)", folder.name, sizes[folder])
            (folder / _COMPLETE).unlink(missing_ok=True)  # never used half-removed
            shutil.rmtree(folder, ignore_errors=True)
            total -= sizes[folder]
