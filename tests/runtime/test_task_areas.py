"""A side's bundle copy (issue 17, dispatch): kept for the next run while neither the
copy nor the bundle it was made from changed, made afresh after any change on either
side, and never writable by the task user."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agata.runtime.sandbox import TaskSandbox
from agata.runtime.task_user import COPY_RECORD

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="a task user needs root and Linux"
)


@pytest.fixture
def sandbox(tmp_path: Path) -> TaskSandbox:
    return TaskSandbox(f"test:{tmp_path}", task_user="nobody", task_dir=tmp_path / "tasks")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    folder = tmp_path / "bundle"
    (folder / "pkg").mkdir(parents=True)
    (folder / "server.py").write_text("print('v1')\n")
    (folder / "pkg" / "helper.py").write_text("X = 1\n")
    return folder


def place(sandbox: TaskSandbox, bundle: Path) -> Path:
    copy, _ = sandbox.place("server", "t1", bundle, bundle.parent / "unused")
    return copy


def test_an_unchanged_bundle_keeps_its_copy(sandbox: TaskSandbox, bundle: Path) -> None:
    # Prepare: a first placement
    first = place(sandbox, bundle)
    made = {name: (first / name).stat().st_ino for name in ("server.py", "pkg/helper.py")}

    # Execute
    second = place(sandbox, bundle)

    # Assert: the same copy (same files, not copied again), with the bundle's content
    assert second == first
    assert {name: (second / name).stat().st_ino for name in made} == made
    assert (second / "server.py").read_text() == "print('v1')\n"
    assert (second.parent / COPY_RECORD).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "change",
    [
        "bundle file rewritten",
        "bundle file added",
        "bundle file removed",
        "copy file rewritten",
        "copy file added",
        "copy file made writable",
        "record missing",
    ],
)
def test_a_change_on_either_side_makes_a_fresh_copy(
    sandbox: TaskSandbox, bundle: Path, change: str
) -> None:
    copy = place(sandbox, bundle)
    before = (copy / "server.py").stat().st_ino

    # Execute: one change, then the next placement
    if change == "bundle file rewritten":
        (bundle / "server.py").write_text("print('v2')\n")
    elif change == "bundle file added":
        (bundle / "pkg" / "more.py").write_text("Y = 2\n")
    elif change == "bundle file removed":
        (bundle / "pkg" / "helper.py").unlink()
    elif change == "copy file rewritten":
        (copy / "server.py").write_text("print('tampered')\n")
    elif change == "copy file added":
        (copy / "pkg" / "extra.py").write_text("Z = 3\n")
    elif change == "copy file made writable":
        (copy / "server.py").chmod(0o666)
    else:
        (copy.parent / COPY_RECORD).unlink()
    again = place(sandbox, bundle)

    # Assert: a fresh copy that is exactly the bundle as it is now, read-only to others
    assert (again / "server.py").stat().st_ino != before
    names = sorted(str(p.relative_to(again)) for p in again.rglob("*"))
    assert names == sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*"))
    for name in names:
        if (bundle / name).is_file():
            assert (again / name).read_bytes() == (bundle / name).read_bytes()
            assert (again / name).stat().st_mode & 0o777 == 0o644


def test_the_task_user_can_neither_change_the_kept_copy_nor_read_its_record(
    sandbox: TaskSandbox, bundle: Path
) -> None:
    copy = place(sandbox, bundle)
    place(sandbox, bundle)  # kept
    attempt = (
        "import sys\n"
        "for path, mode in ((sys.argv[1], 'a'), (sys.argv[2], 'r'), (sys.argv[3], 'w')):\n"
        "    try:\n"
        "        open(path, mode).close()\n"
        "        print('done')\n"
        "    except PermissionError:\n"
        "        print('refused')\n"
    )
    user = sandbox.containment.task_user
    assert user is not None

    # Execute: as the task user, append to a copied file, read the record, add a file
    result = subprocess.run(
        ["setpriv", *user.setpriv_options(), "--", sys.executable, "-c", attempt,
         str(copy / "server.py"), str(copy.parent / COPY_RECORD), str(copy / "new.py")],
        capture_output=True, text=True, cwd="/", check=True,
    )  # fmt: skip

    # Assert
    assert result.stdout.split() == ["refused", "refused", "refused"]
    assert place(sandbox, bundle) == copy and not (copy / "new.py").exists()


def test_the_loop_check_answers_only_for_a_current_kept_copy(
    sandbox: TaskSandbox, bundle: Path
) -> None:
    unused = bundle.parent / "unused"

    # Nothing kept yet: the caller must copy (in a thread)
    assert sandbox.place_kept("server", "t1", bundle, unused) is None

    # Kept and current: the same answer as place()
    placed = sandbox.place("server", "t1", bundle, unused)
    assert sandbox.place_kept("server", "t1", bundle, unused) == placed

    # The bundle changed: again None, and place() makes the fresh copy
    (bundle / "server.py").write_text("print('v2')\n")
    assert sandbox.place_kept("server", "t1", bundle, unused) is None
    copy, _ = sandbox.place("server", "t1", bundle, unused)
    assert (copy / "server.py").read_text() == "print('v2')\n"
