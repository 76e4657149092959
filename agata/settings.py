"""Settings: command-line flags > environment (``AGATA_*``) > config file > defaults.

The config file is TOML (``agata.toml``: top-level keys are the field names below) or
the original system's ``config.ini``, whose sections are mapped onto our fields:

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
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agata.errors import AgataError, ErrorCode

ENV_PREFIX = "AGATA_"


class Settings(BaseModel):
    """Everything configurable, cloud and edge side."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- shared
    bus_url: str = Field("memory://", description="memory:// or amqp://user:pass@host:port/vhost")
    data_dir: Path = Field(Path("agata-data"), description="where databases and bundles live")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    rpc_timeout: float = Field(10.0, gt=0, le=600, description="seconds a bus call may take")
    register_events: bool = Field(True, description="record component events (timings)")

    # -- cloud
    db_url: str = Field("", description="sqlite:///path or postgresql://...; default in data_dir")
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8000, ge=0, le=65535)
    hide_internal_errors: bool = False
    legacy_devices: bool = Field(
        False, description="let devices of the original system in without credentials"
    )
    cors_origins: list[str] = Field(default_factory=list)
    max_upload_bytes: int = Field(50 * 1024 * 1024, gt=0)
    server_grace_seconds: float = Field(5.0, ge=0)
    max_running_tasks: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="runs waiting or running at once; a start past it is queued (none: no cap)",
    )
    artifact_max_mb: int = Field(
        256, ge=1, le=1 << 20, description="largest file a run may save as an artifact (MB)"
    )
    reconcile: Literal["stop", "restart"] = Field(
        "stop", description="what to do on start with tasks left marked running"
    )
    ssl_certfile: Path | None = Field(
        None, description="PEM certificate (chain) of the gateway: it then serves HTTPS"
    )
    ssl_keyfile: Path | None = Field(
        None, description="unencrypted PEM private key of ssl_certfile (else read from it)"
    )
    rate_limit: float = Field(
        0.0, ge=0, description="requests per second per client address; 0: no limit"
    )
    rate_burst: float = Field(
        0.0, ge=0, description="requests at once per address; 0: twice the rate, at least 10"
    )
    max_connections: int = Field(
        10_000,
        ge=16,
        le=1_000_000,
        description="connections the gateway holds at once (every agent keeps one open "
        "for its event stream); 503 beyond",
    )
    body_timeout: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="seconds the whole of a request body may take after its head (408 beyond)",
    )
    body_min_rate: float = Field(
        4096.0,
        gt=0,
        description="bytes/s a request body must average after its first 10 s (408 below)",
    )
    max_slow_bodies: int = Field(
        16,
        ge=1,
        description="request bodies unfinished 10 s after their head one client address may "
        "send at once (429 beyond)",
    )
    max_downloads: int = Field(
        4,
        ge=1,
        le=10_000,
        description="bundle downloads one device (or operator token, or task password) may "
        "run at once (429 beyond)",
    )
    max_in_flight: int = Field(
        64,
        ge=1,
        le=100_000,
        description="requests the gateway serves at once; as many more wait up to "
        "admission_wait, the rest get 503 with Retry-After at once",
    )
    admission_wait: float = Field(
        1.0,
        ge=0,
        le=60,
        description="seconds a request may wait for one of max_in_flight places before "
        "503 with Retry-After",
    )
    service_max_in_flight: int = Field(
        64,
        ge=1,
        le=100_000,
        description="bus requests each cloud service handles at once (all its operations)",
    )

    wheelhouse: Path | None = Field(
        None, description="a folder of wheels the gateway serves to devices; none by default"
    )

    # -- edge
    cloud_url: str = "http://127.0.0.1:8000"
    edge_bus_url: str = Field("", description="broker of the device (original deployment)")
    device_file: Path | None = None
    request_interval: float = Field(10.0, gt=0, description="seconds between task polls")
    policy: Literal["one", "all"] = "one"
    max_tasks: int = Field(4, ge=1)
    quarantine_seconds: float = Field(3600.0, ge=0)
    download_attempts: int = Field(3, ge=1)
    ca_file: Path | None = Field(
        None, description="PEM CA certificate(s) trusted for the cloud's HTTPS, and no others"
    )
    hook_command: str = Field(
        "", description="program run on each task-state change (docs/edge.md); '': none"
    )
    hook_timeout: float = Field(
        10.0, gt=0, le=3600, description="seconds a hook may run before it is killed"
    )

    # -- task processes (cloud: server sides; edge: client sides)
    task_user: str = Field(
        "nobody",
        description="user task processes run as when AGATA runs as root; empty: AGATA's own",
    )
    task_dir: Path | None = Field(
        None,
        description="root of the task folders used with a task user (bundle copies, work "
        "folders); default <temp dir>/agata-tasks/<hash of data_dir>",
    )
    task_memory_mb: int | None = Field(None, ge=1, description="default memory limit (MiB)")
    task_cpu_cores: float | None = Field(None, gt=0, description="default CPU limit (cores)")
    task_open_files: int | None = Field(None, ge=16, description="default open-file limit")
    task_pids: int | None = Field(None, ge=1, description="default process limit")
    task_wall_seconds: float | None = Field(None, gt=0, description="default wall time limit")
    env_index_url: str = Field("", description="package index for task environments")
    env_find_links: str = Field("", description="wheel folder/URL for task environments")
    env_no_index: bool = Field(False, description="task environments: only env_find_links")
    env_allow_direct: bool = Field(
        False, description="accept URLs, paths and options in a bundle's requirements.txt"
    )
    env_timeout: float = Field(600.0, gt=0, description="seconds one environment build may take")
    env_cache_mb: int = Field(5120, ge=0, description="task environments kept (MiB; 0: no bound)")

    @field_validator(
        "ssl_certfile",
        "ssl_keyfile",
        "ca_file",
        "task_dir",
        "wheelhouse",
        "task_memory_mb",
        "task_cpu_cores",
        "task_open_files",
        "task_pids",
        "task_wall_seconds",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value  # AGATA_SSL_CERTFILE= unsets a file setting

    @field_validator("ssl_certfile", "ssl_keyfile", "ca_file")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"{value} is not a file")
        if not os.access(value, os.R_OK):
            raise ValueError(f"{value} is not readable by this user")
        return value

    @field_validator("wheelhouse")
    @classmethod
    def _readable_folder(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.is_dir() and os.access(value, os.R_OK | os.X_OK)):
            raise ValueError(f"{value} is not a folder this user can read")
        return value

    @field_validator("rate_burst")
    @classmethod
    def _whole_burst(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("must be 0 (the default burst) or at least 1 request")
        return value

    @model_validator(mode="after")
    def _key_with_certificate(self) -> Settings:
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile is given without ssl_certfile (its certificate)")
        return self

    @field_validator("bus_url", "edge_bus_url")
    @classmethod
    def _known_bus_scheme(cls, value: str) -> str:
        if value and value.split("://", 1)[0] not in {"memory", "amqp", "amqps"}:
            raise ValueError("must start with memory://, amqp:// or amqps://")
        return value

    @field_validator("db_url")
    @classmethod
    def _known_db_scheme(cls, value: str) -> str:
        if value and not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    @property
    def task_limits(self) -> dict[str, Any]:
        """The configured default limits of a task (see ``agata.runtime.limits``)."""
        return {
            "memory_mb": self.task_memory_mb,
            "cpu_cores": self.task_cpu_cores,
            "open_files": self.task_open_files,
            "pids": self.task_pids,
            "wall_seconds": self.task_wall_seconds,
        }

    @property
    def env_index_options(self) -> list[str]:
        """Installer options of task environments (uv and pip understand the same)."""
        options = ["--index-url", self.env_index_url] if self.env_index_url else []
        if self.env_find_links:
            options += ["--find-links", self.env_find_links]
        return [*options, "--no-index"] if self.env_no_index else options

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'agata.db').resolve()}"


FIELDS = set(Settings.model_fields)


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


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name.startswith("AGATA_TEST_"):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in FIELDS:
            values[key] = raw.split(",") if key == "cors_origins" and raw else raw
    return values


def load_settings(
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the sources (flags > environment > file > defaults) and validate."""
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get("AGATA_CONFIG"):
        config_file = Path(environ["AGATA_CONFIG"])
    origin: dict[str, str] = {}
    values: dict[str, Any] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if config_file is not None:
        layers.append((str(config_file), read_config_file(config_file)))
    layers.append(("environment", _read_env(environ)))
    layers.append(("command line", {k: v for k, v in (flags or {}).items() if v is not None}))
    for source, layer in layers:
        for key, value in layer.items():
            if key not in FIELDS:
                raise AgataError(
                    ErrorCode.INVALID_ARGUMENT, f"unknown setting {key!r} (from {source})"
                )
            values[key] = value
            origin[key] = f"{ENV_PREFIX}{key.upper()}" if source == "environment" else source
    try:
        return Settings.model_validate(values)
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
