"""Which optional part of AGATA (an extra of the package) a missing module belongs to.

A device installs only the core (``pip install 'agata[edge]'``); the cloud's web stack is
the ``cloud`` extra. A command that needs an extra that is not installed ends with one
line naming the extra and the pip command, instead of a traceback.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRA_OF_MODULE", "install_hint", "missing_extra", "require_modules"]

#: Top-level module -> the extra that installs it.
EXTRA_OF_MODULE: dict[str, str] = {
    "fastapi": "cloud",
    "starlette": "cloud",
    "uvicorn": "cloud",
    "multipart": "cloud",
    "python_multipart": "cloud",
    "sqlalchemy": "cloud",
    "prometheus_client": "cloud",
    "flwr": "flower",
    "numpy": "flower",
    "sklearn": "flower",
    "psycopg": "postgres",
    "matplotlib": "plots",
}


def install_hint(extra: str) -> str:
    return f"pip install 'agata[{extra}]'"


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra that provides the module ``exc`` could not import (None: not ours)."""
    if not exc.name:
        return None
    return EXTRA_OF_MODULE.get(exc.name.split(".")[0])


def require_modules(command: str, *modules: str) -> str | None:
    """None when every module is importable; else the message naming what to install."""
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    extras = sorted({EXTRA_OF_MODULE.get(m, m) for m in absent})
    return (
        f"{command} needs {', '.join(absent)} (the {'/'.join(extras)} extra), which is not "
        f"installed: {install_hint(','.join(extras))}"
    )
