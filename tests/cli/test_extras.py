"""The command line without the cloud extra: the edge commands work, a cloud command ends
with one line naming the extra to install.

The interpreter of the test venv has every extra; each case runs ``agata`` in a real
subprocess whose import system refuses the cloud's modules (``sys.modules[name] =
None`` makes ``import name`` raise ModuleNotFoundError, as a missing package does).
The wheel step of scripts/test.sh checks the same in a venv that has only the core.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLOUD_MODULES = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "prometheus_client")

RUNNER = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
sys.argv = ["agata", *{args!r}]
from agata.cli.main import main
main()
"""


def _agata(
    args: list[str], blocked: tuple[str, ...], cwd: Path
) -> subprocess.CompletedProcess[str]:
    code = RUNNER.format(blocked=blocked, args=args)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_cloud_command_without_cloud_extra_names_the_extra(tmp_path: Path) -> None:
    run = _agata(["cloud", "run", "--data-dir", str(tmp_path / "d")], CLOUD_MODULES, tmp_path)

    assert run.returncode == 2, run.stderr
    assert "pip install 'agata[cloud]'" in run.stderr
    assert "Traceback" not in run.stderr


def test_demo_without_cloud_extra_names_the_extra(tmp_path: Path) -> None:
    run = _agata(["demo"], ("fastapi",), tmp_path)

    assert run.returncode == 2, run.stderr
    assert "agata[cloud" in run.stderr and "Traceback" not in run.stderr


def test_edge_agent_imports_without_the_cloud_extra(tmp_path: Path) -> None:
    code = (
        f"import sys\nfor n in {CLOUD_MODULES!r}: sys.modules[n] = None\n"
        "import agata.edge.agent, agata.edge.edge_gateway, agata.edge.hooks, agata.cli.main\n"
        "from agata.resources import example_path\n"
        "print(example_path('hooks', 'gpio-led'))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    help_run = _agata(["edge", "run", "--help"], CLOUD_MODULES, tmp_path)

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("gpio-led")
    assert help_run.returncode == 0, help_run.stderr
    assert "--cloud-url" in help_run.stdout
