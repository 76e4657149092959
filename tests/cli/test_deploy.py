"""``agata deploy systemd cloud|edge``: the units are valid for systemd and say what the
deployment needs (dedicated user, restart on failure, open-file limit)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agata.deploy.systemd import UnitOptions, render_unit
from agata.errors import AgataError

AGATA = Path(sys.executable).parent / "agata"


def _unit(role: str, tmp_path: Path, *args: str) -> tuple[Path, str]:
    path = tmp_path / f"agata-{role}.service"
    run = subprocess.run(
        [str(AGATA), "deploy", "systemd", role, "--output", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return path, run.stderr


def _service(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser["Service"]


def _verify(path: Path) -> list[str]:
    """systemd-analyze's complaints about ``path`` (it exits 0 on mere warnings)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed; the units are checked by parsing")
    run = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in run.stderr.splitlines() if path.name in line]
    return complaints + ([f"exit {run.returncode}"] if run.returncode else [])


@pytest.mark.parametrize("role", ["cloud", "edge"])
def test_the_unit_runs_agata_as_a_dedicated_user_restarting_on_failure(
    role: str, tmp_path: Path
) -> None:
    path, howto = _unit(role, tmp_path, "--config", "/etc/agata/agata.toml")

    service = _service(path)
    assert service["ExecStart"] == f"{AGATA} {role} run --config /etc/agata/agata.toml"
    assert service["User"] == "agata" and service["Group"] == "agata"
    assert service["Restart"] == "on-failure"
    assert int(service["LimitNOFILE"]) >= (65536 if role == "cloud" else 4096)
    assert service["KillMode"] == "mixed"
    assert service["StateDirectory"] == f"agata-{role}"
    assert "useradd --system" in howto and f"enable --now agata-{role}.service" in howto


@pytest.mark.parametrize("role", ["cloud", "edge"])
def test_systemd_accepts_the_unit(role: str, tmp_path: Path) -> None:
    path, _ = _unit(role, tmp_path, "--gpio", "--limit-nofile", "200000")

    assert _verify(path) == []


def test_the_verification_sees_a_broken_unit(tmp_path: Path) -> None:
    # The check above is not vacuous: the same unit with a bad value is reported.
    path, _ = _unit("edge", tmp_path)
    path.write_text(path.read_text().replace("Restart=on-failure", "Restart=sometimes"))

    assert _verify(path) != []


def test_values_that_would_break_a_unit_are_refused() -> None:
    with pytest.raises(AgataError, match="absolute"):
        render_unit(UnitOptions("edge", Path("bin/agata")))
    with pytest.raises(AgataError, match="cannot go in a unit"):
        render_unit(UnitOptions("edge", AGATA, user="agata\nUser=root"))
    with pytest.raises(AgataError, match="cannot go in a unit"):
        render_unit(UnitOptions("cloud", AGATA, config=Path("/etc/it's.toml")))
