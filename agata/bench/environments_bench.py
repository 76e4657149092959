"""``agata bench environments``: task environments, first build and later dispatches.

- First build: an environment from a local wheelhouse (``--wheelhouse``, e.g. one made
  with ``pip download -d wheels flwr numpy scikit-learn`` for the digits task, and
  ``--requirements`` naming what to install); without one, from a one-wheel wheelhouse
  made here (so the figure is the fixed cost of an environment). Reported, no target.
- Dispatch: the same one-line task started alternately with AGATA's interpreter (no
  declared dependencies) and through an existing environment (the cache lookup plus its
  interpreter), same run; target (issue 13): the median within 20 ms of the former.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

from agata.bench.report import BenchReport
from agata.runtime.environments import EnvironmentCache
from agata.runtime.messages import TaskMessage
from agata.runtime.supervisor import TaskProcess

__all__ = ["run_environments_bench"]

TARGET_MS = 20.0
_TASK = "print('up', flush=True)\n"


def _tiny_wheel(folder: Path) -> None:
    """One pure-Python wheel, ``agatabench``, so a build needs no network."""
    name, dist = "agatabench", "agatabench-1.0.dist-info"
    files = {
        f"{name}/__init__.py": "",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: agata\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = [
        f"{path},sha256="
        + base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        + f",{len(text.encode())}"
        for path, text in files.items()
    ]
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)


async def _first_line(bundle: Path, python: str | None) -> float:
    first = asyncio.Event()

    async def on_message(_message: TaskMessage) -> None:
        first.set()

    task = TaskProcess(
        bundle, "task.py", on_message=on_message, python=python, require_finished=False
    )
    began = time.perf_counter()
    await task.start()
    await asyncio.wait_for(first.wait(), 60)
    elapsed = (time.perf_counter() - began) * 1000
    await task.wait()
    return elapsed


async def _dispatches(
    bundle: Path, cache: EnvironmentCache, requirements: str, rounds: int
) -> tuple[list[float], list[float]]:
    bare: list[float] = []
    with_env: list[float] = []
    for _ in range(rounds):
        bare.append(await _first_line(bundle, None))
        began = time.perf_counter()
        python = await asyncio.to_thread(cache.ensure, requirements)  # a cache hit
        lookup = (time.perf_counter() - began) * 1000
        with_env.append(lookup + await _first_line(bundle, str(python)))
    return bare, with_env


def run_environments_bench(
    rounds: int = 20, wheelhouse: Path | None = None, requirements: str = ""
) -> BenchReport:
    report = BenchReport("task environments: first build, later dispatch")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if wheelhouse is None:
            wheelhouse = root / "wheels"
            _tiny_wheel(wheelhouse)
            requirements = "agatabench\n"
        offline = ["--no-index", "--find-links", str(wheelhouse)]
        cache = EnvironmentCache(root / "envs", index_options=offline, max_bytes=0)
        report.context["installer"] = "uv" if cache.uv else "pip"
        report.context["requirements"] = requirements.split()
        began = time.perf_counter()
        cache.ensure(requirements)
        report.add("first build", round(time.perf_counter() - began, 2), "s")
        bundle = root / "bundle"
        bundle.mkdir()
        (bundle / "task.py").write_text(_TASK)
        bare, with_env = asyncio.run(_dispatches(bundle, cache, requirements, rounds))
    bare_ms, env_ms = statistics.median(bare), statistics.median(with_env)
    report.add("dispatch, no dependencies (median)", round(bare_ms, 2), "ms")
    report.add("dispatch, existing environment (median)", round(env_ms, 2), "ms")
    report.add(
        "environment adds to a dispatch",
        round(env_ms - bare_ms, 2),
        "ms",
        at_most=TARGET_MS,
        note=f"{rounds} rounds, alternating; same run",
    )
    return report
