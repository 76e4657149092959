"""The wheel as pip builds it: it carries the example tasks and hooks, and its metadata
keeps the cloud's web stack out of the core (what a device installs).

scripts/wheel-check.sh (a step of scripts/test.sh) goes further: it installs the wheel
in fresh venvs and runs ``agata demo`` from an empty folder.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert match is not None, requirement
    return match.group(0).lower()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    [path] = out.glob("agata-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_carries_the_examples(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())

    for name in ("server.py", "client.py", "tasklib.py", "digits_model.py"):
        assert f"agata/examples/tasks/digits/{name}" in names
    assert {
        "agata/examples/tasks/failing/server.py",
        "agata/examples/tasks/failing/client.py",
    } <= names
    hook = wheel.getinfo("agata/examples/hooks/gpio-led")
    assert (hook.external_attr >> 16) & 0o111, "the example hook must stay executable"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_core_does_not_pull_the_cloud_web_stack(wheel: zipfile.ZipFile) -> None:
    [metadata] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    fields = Parser().parsestr(wheel.read(metadata).decode())
    requires = fields.get_all("Requires-Dist") or []
    core = [_name(r) for r in requires if ";" not in r]

    assert {"pydantic", "httpx", "typer"} <= set(core)
    for package in ("fastapi", "uvicorn", "sqlalchemy", "prometheus-client", "flwr"):
        assert package not in core, f"{package} is in the core"
    extras = set(fields.get_all("Provides-Extra") or [])
    assert {"edge", "cloud", "flower", "postgres", "plots", "demo"} <= extras
    assert any(r.startswith("fastapi") and 'extra == "cloud"' in r for r in requires)
