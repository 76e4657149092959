"""What a flower-app bundle must hold, and the app project it gives a run.

A flower-app bundle is either

- the app project's files, flat (an AGATA bundle has no subfolders): ``pyproject.toml``
  with ``[tool.flwr.app]``, its ``components`` ``serverapp`` and ``clientapp`` (as
  ``module:attribute``), and the modules they name; or
- exactly one ``.fab`` file (``flwr build``'s Flower App Bundle, a zip). Its name is
  ``<publisher>.<name>.<version>.<hash>.fab`` where ``<hash>`` starts the SHA-256 of the
  file: a FAB whose content does not match its name is refused.

:func:`check_app` is the one validation, at upload and at start: every failure is an
``INVALID_ARGUMENT`` naming what is missing or wrong (the HTTP edge makes it a 400).
:func:`app_folder` gives the folder ``flwr run`` submits: the bundle itself, or the
FAB unpacked (after the hash check) into the run's folder.

AGATA's own options for a run are keys of ``[tool.agata]`` in ``pyproject.toml``
(:class:`RunOptions`); the task's server arguments override them as ``agata.<key>=N``.
"""

from __future__ import annotations

import hashlib
import io
import re
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agata.errors import invalid

__all__ = [
    "FAB_SUFFIX",
    "FlowerApp",
    "RunOptions",
    "app_folder",
    "check_app",
    "check_fab_name",
    "read_app",
]

FAB_SUFFIX = ".fab"
PYPROJECT = "pyproject.toml"
#: A FAB's name: publisher.name.version.hash.fab (the hash: hex, at least 8 digits).
_FAB_NAME = re.compile(r"^(?P<stem>.+)\.(?P<hash>[0-9a-f]{8,64})\.fab$")
_COMPONENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$")
_MAX_FAB_BYTES = 200 * 1024 * 1024
_MAX_PYPROJECT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RunOptions:
    """AGATA's rules for one run of a flower-app task (``[tool.agata]``).

    - ``min-nodes``: SuperNodes that must be connected for the run to go on;
    - ``join-seconds``: how long after the submission the run may have fewer (then it
      ends failed, naming the devices that did not join);
    - ``lost-nodes``: how many connected nodes may go away mid-run before it ends failed
      (the tolerance); ``lost-seconds``: how long one may stay away before it counts;
    - ``poll-seconds``: how often the run's status and nodes are read.
    """

    min_nodes: int = 1
    join_seconds: float = 300.0
    lost_nodes: int = 0
    lost_seconds: float = 30.0
    poll_seconds: float = 5.0

    _KEYS = {
        "min-nodes": "min_nodes",
        "join-seconds": "join_seconds",
        "lost-nodes": "lost_nodes",
        "lost-seconds": "lost_seconds",
        "poll-seconds": "poll_seconds",
    }

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str) -> RunOptions:
        """Options from a TOML-like table; an unknown key or a bad value is a 400."""
        values: dict[str, float] = {}
        for key, value in table.items():
            attribute = cls._KEYS.get(key)
            if attribute is None:
                known = ", ".join(cls._KEYS)
                raise invalid(f"{where}: unknown key {key!r} (known: {known})")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise invalid(f"{where}: {key} must be a number >= 0, got {value!r}")
            if attribute in ("min_nodes", "lost_nodes") and value != int(value):
                raise invalid(f"{where}: {key} must be a whole number, got {value!r}")
            values[attribute] = float(value)
        default = cls()
        options = cls(
            min_nodes=int(values.get("min_nodes", default.min_nodes)),
            join_seconds=values.get("join_seconds", default.join_seconds),
            lost_nodes=int(values.get("lost_nodes", default.lost_nodes)),
            lost_seconds=values.get("lost_seconds", default.lost_seconds),
            poll_seconds=values.get("poll_seconds", default.poll_seconds),
        )
        if options.poll_seconds <= 0:
            raise invalid(f"{where}: poll-seconds must be > 0")
        return options


@dataclass(frozen=True)
class FlowerApp:
    """The parts of an app project AGATA uses."""

    publisher: str
    name: str
    version: str
    serverapp: str
    clientapp: str
    config: dict[str, Any] = field(default_factory=dict)  # the run config's defaults
    options: RunOptions = field(default_factory=RunOptions)


def parse_pyproject(text: bytes, where: str = PYPROJECT) -> FlowerApp:
    """The app described by a ``pyproject.toml``; a 400 naming what is missing."""
    if len(text) > _MAX_PYPROJECT_BYTES:
        raise invalid(f"{where} is larger than {_MAX_PYPROJECT_BYTES} bytes")
    try:
        document = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise invalid(f"{where} is not valid TOML: {exc}") from None
    project = document.get("project")
    flwr = document.get("tool", {}).get("flwr", {})
    app = flwr.get("app") if isinstance(flwr, dict) else None
    if not isinstance(app, dict):
        raise invalid(f"{where} has no [tool.flwr.app] table: not a Flower App project")
    components = app.get("components")
    if not isinstance(components, dict):
        raise invalid(f"{where} has no [tool.flwr.app.components] (serverapp and clientapp)")
    missing = [c for c in ("serverapp", "clientapp") if not isinstance(components.get(c), str)]
    if missing:
        raise invalid(f"{where}: [tool.flwr.app.components] has no {' and no '.join(missing)}")
    for component in ("serverapp", "clientapp"):
        if not _COMPONENT.match(components[component]):
            raise invalid(
                f"{where}: components.{component} must be 'module:attribute', "
                f"got {components[component]!r}"
            )
    if not isinstance(project, dict) or not isinstance(project.get("name"), str):
        raise invalid(f"{where} has no [project] name")
    publisher = app.get("publisher")
    if not isinstance(publisher, str) or not publisher:
        raise invalid(f"{where}: [tool.flwr.app] has no publisher")
    config = app.get("config", {})
    if not isinstance(config, dict):
        raise invalid(f"{where}: [tool.flwr.app.config] must be a table")
    agata = document.get("tool", {}).get("agata", {})
    if not isinstance(agata, dict):
        raise invalid(f"{where}: [tool.agata] must be a table")
    return FlowerApp(
        publisher=publisher,
        name=project["name"],
        version=str(project.get("version", "0.0.0")),
        serverapp=components["serverapp"],
        clientapp=components["clientapp"],
        config=config,
        options=RunOptions.from_table(agata, f"{where} [tool.agata]"),
    )


def check_fab_name(name: str, content_hash: str) -> None:
    """Refuse a FAB whose name does not end with the start of its SHA-256."""
    match = _FAB_NAME.match(name)
    if match is None:
        raise invalid(
            f"{name}: a FAB's name must be <publisher>.<name>.<version>.<hash>.fab "
            "(as flwr build writes it)"
        )
    if not content_hash.startswith(match.group("hash")):
        raise invalid(
            f"{name}: its content's SHA-256 is {content_hash[:16]}..., not "
            f"{match.group('hash')}...: the FAB was changed or damaged after flwr build"
        )


def _fab_pyproject(name: str, data: bytes) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            try:
                return archive.read(PYPROJECT)
            except KeyError:
                raise invalid(f"{name} holds no {PYPROJECT}") from None
    except zipfile.BadZipFile:
        raise invalid(f"{name} is not a FAB (not a zip archive)") from None


def check_app(names: Iterable[str], read: Callable[[str], bytes]) -> FlowerApp:
    """Validate a flower-app bundle given its file names and a reader of one file.

    Raises INVALID_ARGUMENT naming what is missing: no ``pyproject.toml`` (nor one
    ``.fab``), no ``[tool.flwr.app]``, a component missing or whose module is not in
    the bundle, a FAB beside other files, a FAB whose hash does not match its name.
    """
    listed = set(names)
    fabs = sorted(n for n in listed if n.endswith(FAB_SUFFIX))
    if fabs:
        if len(listed) != 1:
            raise invalid(
                f"a FAB bundle is the one .fab file alone; found {', '.join(sorted(listed))}"
            )
        data = read(fabs[0])
        if len(data) > _MAX_FAB_BYTES:
            raise invalid(f"{fabs[0]} is larger than {_MAX_FAB_BYTES} bytes")
        check_fab_name(fabs[0], hashlib.sha256(data).hexdigest())
        return parse_pyproject(_fab_pyproject(fabs[0], data), f"{fabs[0]}:{PYPROJECT}")
    if PYPROJECT not in listed:
        raise invalid(
            f"a flower-app bundle needs {PYPROJECT} (with [tool.flwr.app]) or one .fab "
            "file; upload the app project's files"
        )
    app = parse_pyproject(read(PYPROJECT))
    for component in (app.serverapp, app.clientapp):
        module = component.split(":", 1)[0]
        top = module.split(".", 1)[0]
        if f"{module}.py" not in listed and f"{top}.py" not in listed:
            raise invalid(
                f"{PYPROJECT} names component {component!r}, but the bundle has no "
                f"{module}.py (bundles are flat: put the modules beside {PYPROJECT})"
            )
    return app


def read_app(folder: Path) -> FlowerApp:
    """:func:`check_app` over the files of a bundle folder."""
    names = [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return check_app(names, lambda name: (folder / name).read_bytes())


def app_folder(bundle: Path, work: Path) -> tuple[Path, FlowerApp]:
    """The folder ``flwr run`` submits for ``bundle`` and the app it holds: the bundle
    itself, or its FAB unpacked into ``work/app`` after the hash check."""
    app = read_app(bundle)
    fabs = sorted(bundle.glob(f"*{FAB_SUFFIX}"))
    if not fabs:
        return bundle, app
    target = work / "app"
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(fabs[0]) as archive:
        for member in archive.infolist():
            path = (target / member.filename).resolve()
            if not path.is_relative_to(target.resolve()):
                raise invalid(f"{fabs[0].name}: member {member.filename!r} leaves the app folder")
            if member.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(member))
    return target, app
