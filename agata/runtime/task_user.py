"""The unprivileged user task code runs as, and the folders it may use.

When AGATA runs as root, task processes run as ``--task-user`` (default ``nobody``;
a dedicated ``useradd --system agata-task`` is better: see ``docs/security.md``). The
data folder (databases, tokens, credentials, the served bundles) is 0700 and owned by
AGATA, so such a task cannot read or change it. Each run gets an *area* of its own under
the task folder (``--task-dir``, reachable by the task user)::

    <task dir>/<side>/task_<id>/bundle/   a copy of the bundle: AGATA's, read-only to the task
    <task dir>/<side>/task_<id>/work/     the task's work folder, owned by the task user (0700)

The copy is kept for the next run while neither it nor the bundle it was made from has
changed since (``bundle.json`` beside it, 0600, records each file's and folder's inode,
size, mode, mtime and ctime on both sides: any write, chmod, rename or new file changes
one of them). The task user cannot write to the copy; the bundle itself was verified by
hash by whoever hands it over (the cloud's listing check, the agent's bundle cache).

When AGATA does not run as root there is no other user to switch to: tasks run as
AGATA's user, in the bundle and work folders of today, and are not kept from its files.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agata.errors import AgataError, ErrorCode
from agata.files import write_private_file

__all__ = [
    "COPY_RECORD",
    "DEFAULT_TASK_USER",
    "TaskUser",
    "check_interpreter",
    "kept_area",
    "prepare_area",
    "resolve_task_user",
]

logger = logging.getLogger(__name__)

DEFAULT_TASK_USER = "nobody"


@dataclass(frozen=True, slots=True)
class TaskUser:
    name: str
    uid: int
    gid: int

    def setpriv_options(self) -> list[str]:
        """``setpriv`` options switching to this user with no supplementary groups."""
        return [f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]


def resolve_task_user(name: str) -> TaskUser | None:
    """The user task processes run as: None when AGATA is not root or ``name`` is empty
    (tasks then run as AGATA's user). Raises INVALID_ARGUMENT for an unknown user or
    for root itself."""
    if not name or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT,
            f"task user {name!r} does not exist (create it: useradd --system {name})",
        ) from None
    if entry.pw_uid == 0:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"task user {name!r} is root")
    return TaskUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


#: What a task process imports of AGATA (``TaskReporter``): the probe imports it too.
_PROBE = "import agata.runtime.reporter"


def check_interpreter(user: TaskUser, python: str | None = None) -> None:
    """Raise INVALID_ARGUMENT with the reason when ``user`` cannot run ``python``
    (default: this interpreter, which task sides without an environment of their own
    run with) and import AGATA's task reporter with it.

    The usual cause is a folder on the way closed to other users: a virtualenv under
    ``/root`` or in a private temporary folder. Checked once at start (a real run of
    the interpreter as that user, ~0.1 s), so the first task does not fail obscurely."""
    python = python or sys.executable
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return  # the launcher refuses a task user without setpriv, with its own reason
    try:
        probe = subprocess.run(
            [setpriv, *user.setpriv_options(), "--", python, "-c", _PROBE],
            cwd="/",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/"},
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = f"{exc}"
    else:
        if probe.returncode == 0:
            return
        lines = (probe.stderr or probe.stdout).strip().splitlines()
        why = lines[-1] if lines else f"exit code {probe.returncode}"
    raise AgataError(
        ErrorCode.INVALID_ARGUMENT,
        f"task user {user.name!r} cannot run {python} and import AGATA's task reporter "
        f"({why}); install AGATA where that user may read it (e.g. a virtualenv under "
        "/opt, not /root or a private temporary folder), choose another --task-user, or "
        "give --task-user '' to run tasks as AGATA's own user (they can then read its "
        "secrets)",
    )


def _reachable(folder: Path) -> None:
    """Create ``folder`` (and parents) so others may pass through but not list it."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o711)


#: Beside a bundle copy: what it was made from and what it was (see the module docstring).
COPY_RECORD = "bundle.json"

#: A file's or folder's (inode, size, mode, mtime ns, ctime ns).
_Identity = list[int]


def _tree(folder: Path) -> dict[str, _Identity] | None:
    """Every folder and file under ``folder`` (itself as "."), by relative path, with its
    identity; None when something in it is not a plain file or folder, or it cannot be
    read."""
    found: dict[str, _Identity] = {}
    try:
        for root, dirs, files in os.walk(folder, onerror=_raise):
            for name in [".", *dirs, *files]:
                path = os.path.join(root, name)
                info = os.lstat(path)
                if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
                    return None
                key = os.path.normpath(os.path.relpath(path, folder))
                found[key] = [
                    info.st_ino,
                    info.st_size if stat.S_ISREG(info.st_mode) else 0,
                    info.st_mode,
                    info.st_mtime_ns,
                    info.st_ctime_ns,
                ]
    except OSError:
        return None
    return found


def _raise(error: OSError) -> None:
    raise error


def _kept_copy(record: Path, bundle: Path, copy: Path, max_entries: int | None = None) -> bool:
    """Whether ``copy`` is, unchanged, the copy of ``bundle`` as it is now (False
    without looking when it holds more than ``max_entries`` files and folders)."""
    try:
        kept = json.loads(record.read_text("utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(kept, dict) or "source" not in kept or "copy" not in kept:
        return False
    if max_entries is not None and len(kept["copy"]) > max_entries:
        return False
    source = _tree(bundle)
    return source is not None and source == kept["source"] and _tree(copy) == kept["copy"]


def kept_area(
    task_dir: Path, area: Path, bundle: Path, user: TaskUser, max_entries: int
) -> tuple[Path, Path] | None:
    """:func:`prepare_area` when it has nothing to copy (the kept copy is current and
    holds at most ``max_entries`` files and folders: cheap enough for an event loop),
    else None."""
    if not _kept_copy(area / COPY_RECORD, bundle, area / "bundle", max_entries):
        return None
    return _prepare(task_dir, area, bundle, user, kept=True)


def prepare_area(task_dir: Path, area: Path, bundle: Path, user: TaskUser) -> tuple[Path, Path]:
    """Make the run area ``area`` (inside ``task_dir``) of a task for ``user``: a
    read-only copy of ``bundle`` (the one kept from an earlier run while neither it nor
    ``bundle`` changed, else a fresh one) and a work folder ``user`` owns (kept between
    runs). Returns (bundle copy, work folder). Not safe to call twice at once for one
    area (:class:`~agata.runtime.sandbox.TaskSandbox` holds a lock per area).

    The folders from ``task_dir`` down to ``area`` are made 0711: the task user may pass
    through them but not list them. ``task_dir``'s own parents must let it through."""
    return _prepare(task_dir, area, bundle, user, kept=False)


def _prepare(
    task_dir: Path, area: Path, bundle: Path, user: TaskUser, *, kept: bool
) -> tuple[Path, Path]:
    """:func:`prepare_area`; ``kept``: the caller found the kept copy current."""
    relative = area.relative_to(task_dir)
    folder = task_dir
    _reachable(folder)
    for part in relative.parts:
        folder = folder / part
        _reachable(folder)
    copy = area / "bundle"
    record = area / COPY_RECORD
    if not kept and not _kept_copy(record, bundle, copy):
        record.unlink(missing_ok=True)
        source = _tree(bundle)
        staged = area / f".bundle-{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(bundle, staged, symlinks=False)
        for root, _dirs, files in os.walk(staged):
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(Path(root) / name, 0o644)
        shutil.rmtree(copy, ignore_errors=True)
        os.replace(staged, copy)
        made = _tree(copy)
        if source is not None and made is not None and _tree(bundle) == source:
            # Kept for the next run; not fsynced: a record lost costs one copy.
            write_private_file(record, json.dumps({"source": source, "copy": made}), durable=False)
    work = area / "work"
    work.mkdir(exist_ok=True)
    os.chown(work, user.uid, user.gid)
    os.chmod(work, 0o700)
    return copy, work
