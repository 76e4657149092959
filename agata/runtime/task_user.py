"""The unprivileged user task code runs as, and the folders it may use.

When AGATA runs as root, task processes run as ``--task-user`` (default ``nobody``;
a dedicated ``useradd --system agata-task`` is better: see ``docs/security.md``). The
data folder (databases, tokens, credentials, the served bundles) is 0700 and owned by
AGATA, so such a task cannot read or change it. Each run gets an *area* of its own under
the task folder (``--task-dir``, reachable by the task user)::

    <task dir>/<side>/task_<id>/bundle/   a copy of the bundle: AGATA's, read-only to the task
    <task dir>/<side>/task_<id>/work/     the task's work folder, owned by the task user (0700)

When AGATA does not run as root there is no other user to switch to: tasks run as
AGATA's user, in the bundle and work folders of today, and are not kept from its files.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agata.errors import AgataError, ErrorCode

__all__ = [
    "DEFAULT_TASK_USER",
    "TaskUser",
    "check_interpreter",
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


def prepare_area(task_dir: Path, area: Path, bundle: Path, user: TaskUser) -> tuple[Path, Path]:
    """Make the run area ``area`` (inside ``task_dir``) of a task for ``user``: a fresh
    read-only copy of ``bundle`` and a work folder ``user`` owns (kept between runs).
    Returns (bundle copy, work folder).

    The folders from ``task_dir`` down to ``area`` are made 0711: the task user may pass
    through them but not list them. ``task_dir``'s own parents must let it through."""
    relative = area.relative_to(task_dir)
    folder = task_dir
    _reachable(folder)
    for part in relative.parts:
        folder = folder / part
        _reachable(folder)
    copy = area / "bundle"
    staged = area / f".bundle-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(bundle, staged, symlinks=False)
    for root, _dirs, files in os.walk(staged):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(Path(root) / name, 0o644)
    shutil.rmtree(copy, ignore_errors=True)
    os.replace(staged, copy)
    work = area / "work"
    work.mkdir(exist_ok=True)
    os.chown(work, user.uid, user.gid)
    os.chmod(work, 0o700)
    return copy, work
