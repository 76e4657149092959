"""The artifact store on a real file system: what it refuses, and that a failed copy
(a limit, a full disk) leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agata.cloud.bundles.artifact_store import ArtifactStore
from agata.errors import AgataError, ErrorCode


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def _left(store: ArtifactStore) -> list[str]:
    return sorted(p.name for p in store.root.rglob("*") if p.is_file())


def test_a_file_of_the_work_folder_is_copied_whole(tmp_path: Path, work: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts", max_bytes=1000)
    (work / "sub").mkdir()
    (work / "sub" / "model.npz").write_bytes(b"m" * 1000)

    saved = store.save("t1", 2, work, "sub/model.npz")

    assert (saved.name, saved.size) == ("model.npz", 1000)
    with store.open("t1", 2, "model.npz") as handle:
        assert handle.read() == b"m" * 1000
    assert _left(store) == ["model.npz"]


@pytest.mark.parametrize(
    ("setup", "requested", "words"),
    [
        (lambda w: (w / ".secret").write_text("x"), ".secret", "hidden"),
        (lambda w: None, "../outside.txt", "not inside"),
        (lambda w: os.symlink("/etc/hostname", w / "link.txt"), "link.txt", "not inside"),
        (lambda w: (w / "dir.bin").mkdir(), "dir.bin", "not a regular file"),
        (lambda w: os.mkfifo(w / "pipe.bin"), "pipe.bin", "not a regular file"),
        (lambda w: (w / "big.bin").write_bytes(b"x" * 1001), "big.bin", "over the limit"),
        (lambda w: None, "absent.bin", "no such file"),
    ],
)
def test_refusals_say_why_and_keep_nothing(
    tmp_path: Path, work: Path, setup: object, requested: str, words: str
) -> None:
    store = ArtifactStore(tmp_path / "artifacts", max_bytes=1000)
    (tmp_path / "outside.txt").write_text("not the task's")
    setup(work)  # type: ignore[operator]

    with pytest.raises(AgataError) as exc:
        store.save("t1", 1, work, requested)

    assert exc.value.code is ErrorCode.INVALID_ARGUMENT
    assert words in exc.value.message
    assert _left(store) == []


def test_a_full_disk_during_the_copy_keeps_nothing(tmp_path: Path, work: Path) -> None:
    # A real write failure: the copying process may write files of at most 64 KiB
    # (RLIMIT_FSIZE), so the copy of a 1 MiB file fails half-way with EFBIG.
    (work / "model.bin").write_bytes(b"w" * (1024 * 1024))
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        from agata.cloud.bundles.artifact_store import ArtifactStore
        from agata.errors import AgataError
        store = ArtifactStore(Path({str(tmp_path / "artifacts")!r}))
        try:
            store.save("t1", 1, Path({str(work)!r}), "model.bin")
        except AgataError as exc:
            print(exc.code.name, exc.message)
            sys.exit(0)
        sys.exit("copied past the limit")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("UNAVAILABLE artifact 'model.bin' not kept:"), result.stdout
    left = list((tmp_path / "artifacts").rglob("*"))
    assert [p for p in left if p.is_file()] == []


def test_unknown_or_bad_names_are_not_found(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")

    for name in ("model.npz", "../etc", ".hidden", ""):
        with pytest.raises(AgataError) as exc:
            store.open("t1", 1, name)
        assert exc.value.code is ErrorCode.NOT_FOUND
