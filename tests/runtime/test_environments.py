"""Task environments built for real, from a wheelhouse made here (no network)."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agata.errors import AgataError, ErrorCode
from agata.runtime.environments import EnvironmentCache, normalize_requirements
from agata.runtime.supervisor import ProcessState, TaskProcess


def make_wheel(
    folder: Path, name: str = "agatatoy", version: str = "1.0", padding: int = 0
) -> Path:
    """A minimal pure-Python wheel: ``import <name>`` gives ``VALUE`` (``padding``: the
    size of an extra data file, to fill disks)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {name!r}\n",
        f"{name}/padding.txt": secrets.token_hex(padding // 2),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    make_wheel(folder)
    return folder


def cache_for(tmp_path: Path, wheelhouse: Path, **options: object) -> EnvironmentCache:
    offline = ["--no-index", "--find-links", str(wheelhouse)]
    return EnvironmentCache(tmp_path / "envs", index_options=offline, **options)  # type: ignore[arg-type]


def run(python: Path, code: str) -> str:
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True, timeout=30, cwd="/"
    ).stdout.strip()


@pytest.mark.parametrize(
    "line",
    [
        "-e .",
        "--index-url https://example.org/simple",
        "--extra-index-url https://example.org/simple",
        "https://example.org/toy-1.0.whl",
        "toy @ https://example.org/toy-1.0.whl",
        "./toy",
        "/abs/toy",
        "git+https://example.org/toy.git",
        "-r other.txt",
    ],
)
def test_urls_paths_and_options_are_refused(line: str) -> None:
    with pytest.raises(AgataError) as refused:
        normalize_requirements(f"numpy\n{line}\n")

    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    assert "line 2" in refused.value.message


def test_normalised_requirements_share_one_key(tmp_path: Path, wheelhouse: Path) -> None:
    cache = cache_for(tmp_path, wheelhouse)
    one = normalize_requirements("# deps\nNumPy>=1.26\n\nAgata_Toy  ==1.0  # pinned\n")
    two = normalize_requirements("agata-toy ==1.0\nnumpy>=1.26\n")

    assert one == two == ["agata-toy ==1.0", "numpy>=1.26"]
    assert cache.key(one) == cache.key(two)


def test_an_environment_is_built_once_and_imports_the_runtime(
    tmp_path: Path, wheelhouse: Path
) -> None:
    cache = cache_for(tmp_path, wheelhouse)
    said: list[str] = []
    pythons: list[Path] = []

    def ensure() -> None:
        pythons.append(cache.ensure("agatatoy==1.0\n", said.append))

    threads = [threading.Thread(target=ensure) for _ in range(3)]  # at the same time
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert len(set(pythons)) == 1 and len(pythons) == 3
    assert len([s for s in said if s.startswith("installing 1 package")]) == 1
    code = (
        "import agatatoy, agata.runtime; from agata.runtime import TaskReporter; "
        "import importlib.util as u; print(agatatoy.VALUE, u.find_spec('agata.cloud'))"
    )
    assert run(pythons[0], code) == "agatatoy None"  # the protocol, not AGATA
    assert not list((tmp_path / "envs").glob(".build-*"))


async def test_a_task_runs_in_its_environment(tmp_path: Path, wheelhouse: Path) -> None:
    python = cache_for(tmp_path, wheelhouse).ensure("agatatoy\n")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "client.py").write_text(
        "import agatatoy\nfrom agata.runtime import TaskReporter\n"
        "r = TaskReporter()\nr.send_print(agatatoy.VALUE)\nr.finished()\n"
    )
    task = TaskProcess.for_side(bundle, "client", tmp_path, python=str(python))

    await task.start()
    outcome = await task.wait()

    assert outcome.state is ProcessState.FINISHED, task.tail()


def test_an_unsatisfiable_requirement_fails_with_the_installers_reason(
    tmp_path: Path, wheelhouse: Path
) -> None:
    cache = cache_for(tmp_path, wheelhouse)

    with pytest.raises(AgataError) as failed:
        cache.ensure("agatanope==9\n")

    assert failed.value.code is ErrorCode.INTERNAL
    assert "installing the requirements failed" in failed.value.message
    assert "agatanope" in failed.value.message
    assert [p.name for p in (tmp_path / "envs").iterdir() if not p.name.endswith(".lock")] == []


def test_the_pip_fallback_builds_the_same_environment(tmp_path: Path, wheelhouse: Path) -> None:
    python = cache_for(tmp_path, wheelhouse, use_uv=False).ensure("agatatoy\n")

    assert run(python, "import agatatoy, agata.runtime; print(agatatoy.VALUE)") == "agatatoy"


def test_least_recently_used_environments_are_evicted(tmp_path: Path, wheelhouse: Path) -> None:
    make_wheel(wheelhouse, "agatatwo")
    cache = cache_for(tmp_path, wheelhouse, max_bytes=1)  # every other environment is too much
    first = cache.ensure("agatatoy\n")
    second = cache.ensure("agatatwo\n")

    assert second.exists()
    assert not first.parent.parent.exists()  # the older one went


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_keeps_nothing_half_built(
    tmp_path: Path, wheelhouse: Path, small_disk: Path
) -> None:
    make_wheel(wheelhouse, "agatabig", padding=4 * 1024 * 1024)
    offline = ["--no-index", "--find-links", str(wheelhouse)]
    cache = EnvironmentCache(small_disk / "envs", index_options=offline)

    with pytest.raises(AgataError) as failed:
        cache.ensure("agatabig\n")

    assert failed.value.code is ErrorCode.INTERNAL
    assert (
        "No space left on device" in failed.value.message or "os error 28" in failed.value.message
    )
    left = [p.name for p in (small_disk / "envs").iterdir() if not p.name.endswith(".lock")]
    assert left == []
