"""Loading settings: command-line flags > environment (``AGATA_*``) > config file > defaults.

The config file is TOML (``agata.toml``: top-level keys are the setting names, optionally
in ``[cloud]``, ``[edge]`` and ``[bus]`` tables for readability) or the original system's
``config.ini``, whose sections are mapped onto our settings:

====================================  =============================================
original ``config.ini``               AGATA setting
====================================  =============================================
``[server.broker] host, port``        ``bus_url = amqp://guest:guest@host:port/``
``[server.gateway] host?, port``      ``gateway_host``, ``gateway_port``
``[client.broker] host, port``        ``edge_bus_url = amqp://guest:guest@host:port/``
``[client.params] request_interval``  ``request_interval``
``[events] register_events``          ``register_events``
====================================  =============================================

Settings are built by :func:`load_settings` and passed down; nothing reads them at
import time. Every error names the key and where its value came from.
"""

from __future__ import annotations

import configparser
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

from pydantic import ValidationError

from agata.errors import AgataError, ErrorCode
from agata.settings.settings import Settings
from agata.settings.shared_settings import SharedSettings

__all__ = ["ALL_FIELDS", "ENV_PREFIX", "load_settings", "read_config_file"]

ENV_PREFIX = "AGATA_"
#: Every setting of either side.
ALL_FIELDS = frozenset(Settings.model_fields)

S = TypeVar("S", bound=SharedSettings)


def _read_ini(path: Path) -> dict[str, Any]:
    parser = configparser.ConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"{path}: {exc}") from None
    values: dict[str, Any] = {}

    def broker_url(section: str) -> str:
        host = parser.get(section, "host", fallback="localhost")
        port = parser.get(section, "port", fallback="5672")
        user = parser.get(section, "username", fallback="guest")
        password = parser.get(section, "password", fallback="guest")
        return f"amqp://{user}:{password}@{host}:{port}/"

    if parser.has_section("server.broker"):
        values["bus_url"] = broker_url("server.broker")
    if parser.has_section("client.broker"):
        values["edge_bus_url"] = broker_url("client.broker")
    if parser.has_section("server.gateway"):
        if parser.has_option("server.gateway", "host"):
            values["gateway_host"] = parser.get("server.gateway", "host")
        if parser.has_option("server.gateway", "port"):
            values["gateway_port"] = parser.get("server.gateway", "port")
    if parser.has_option("client.params", "request_interval"):
        values["request_interval"] = parser.get("client.params", "request_interval")
    if parser.has_option("events", "register_events"):
        raw = parser.get("events", "register_events").strip().lower()
        # The original's own README spells it "ture"; anything not false-like is true.
        values["register_events"] = raw not in {"false", "0", "no", "off", ""}
    if parser.has_section("agata"):
        values.update(dict(parser.items("agata")))
    return values


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or INI config file into setting values."""
    if not path.is_file():
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"config file {path} does not exist")
    if path.suffix in {".ini", ".cfg"}:
        return _read_ini(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"{path}: invalid TOML: {exc}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in {"cloud", "edge", "bus"}:
            flat.update(value)  # sections are only for readability
        else:
            flat[key] = value
    return flat


def _read_env(environ: Mapping[str, str], fields: set[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name.startswith("AGATA_TEST_"):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in fields:
            values[key] = raw.split(",") if key == "cors_origins" and raw else raw
    return values


@overload
def load_settings(
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings: ...


@overload
def load_settings(
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    side: type[S],
) -> S: ...


def load_settings(
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    side: type[SharedSettings] = Settings,
) -> SharedSettings:
    """Merge the sources (flags > environment > file > defaults) into ``side``'s settings
    (:class:`CloudSettings`, :class:`EdgeSettings` or, for both, :class:`Settings`) and
    validate them.

    One config file may serve both sides: its keys of the other side are left out. A
    key no side knows, in the file, or a flag ``side`` does not have, is refused
    naming where it came from; the environment gives only ``side``'s keys (others are
    left for the other side's processes).
    """
    environ = os.environ if environ is None else environ
    fields = set(side.model_fields)
    if config_file is None and environ.get("AGATA_CONFIG"):
        config_file = Path(environ["AGATA_CONFIG"])
    origin: dict[str, str] = {}
    values: dict[str, Any] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if config_file is not None:
        layers.append((str(config_file), read_config_file(config_file)))
    layers.append(("environment", _read_env(environ, fields)))
    layers.append(("command line", {k: v for k, v in (flags or {}).items() if v is not None}))
    for source, layer in layers:
        for key, value in layer.items():
            if key not in fields:
                if key in ALL_FIELDS and source != "command line":
                    continue  # the other side's setting, in a shared file
                raise AgataError(
                    ErrorCode.INVALID_ARGUMENT, f"unknown setting {key!r} (from {source})"
                )
            values[key] = value
            origin[key] = f"{ENV_PREFIX}{key.upper()}" if source == "environment" else source
    try:
        return side.model_validate(values)
    except ValidationError as exc:
        problems = []
        for item in exc.errors():
            if not item["loc"]:  # a rule over several settings: its message names them
                problems.append(str(item["msg"]))
                continue
            key = ".".join(str(p) for p in item["loc"])
            where = origin.get(str(item["loc"][0]), "defaults")
            problems.append(f"{key} (from {where}): {item['msg']}")
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT, "invalid configuration: " + "; ".join(problems)
        ) from None
