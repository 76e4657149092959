"""Files shipped inside the package: the example task bundles and device hooks.

They live in ``agata/examples/`` (``examples/`` of the checkout is a symlink to it) and
are package data of the wheel, so an installed ``agata`` finds them wherever it runs
from. :func:`example_path` MUST return a real folder or file on disk (task bundles are
uploaded and hooks executed from there); a package imported from a zip archive has no
such path, and is refused with a clear error.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from agata.errors import AgataError, ErrorCode

__all__ = ["example_path", "examples_root"]


def examples_root() -> Path:
    """The ``examples`` folder of the installed package."""
    root = resources.files("agata") / "examples"
    if not isinstance(root, Path):
        raise AgataError(
            ErrorCode.NOT_FOUND,
            f"agata is imported from an archive ({root}); its examples need an installed "
            "package (pip install agata)",
        )
    return root


def example_path(*parts: str) -> Path:
    """``agata/examples/<parts...>``, e.g. ``example_path("tasks", "digits")``.

    Raises AgataError(NOT_FOUND) naming the path when it does not exist.
    """
    path = examples_root().joinpath(*parts)
    if not path.exists():
        raise AgataError(ErrorCode.NOT_FOUND, f"no example {'/'.join(parts)!r} at {path}")
    return path
