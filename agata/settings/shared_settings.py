"""The settings both sides read: the bus, the data folder, logging, the poll interval, and
how task processes run (the cloud's server sides, the agent's client sides)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agata.bus.bus_factory import BUS_ALIASES

__all__ = ["DEFAULT_REQUEST_INTERVAL", "SharedSettings", "check_bus_url", "readable_file"]

#: Seconds between a device's task polls unless configured (the original's default).
DEFAULT_REQUEST_INTERVAL = 10.0


class SharedSettings(BaseModel):
    """Settings of every AGATA process, cloud or edge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bus_url: str = Field("memory://", description="memory:// or amqp://user:pass@host:port/vhost")
    data_dir: Path = Field(Path("agata-data"), description="where databases and bundles live")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    rpc_timeout: float = Field(10.0, gt=0, le=600, description="seconds a bus call may take")
    register_events: bool = Field(True, description="record component events (timings)")
    request_interval: float = Field(
        DEFAULT_REQUEST_INTERVAL,
        gt=0,
        description="seconds between a device's task polls: the agent polls this often and "
        "the cloud sizes its caches of devices from it (give both the fleet's value)",
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
        "task_dir",
        "task_memory_mb",
        "task_cpu_cores",
        "task_open_files",
        "task_pids",
        "task_wall_seconds",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value  # AGATA_TASK_DIR= unsets the setting

    @field_validator("bus_url")
    @classmethod
    def _known_bus_scheme(cls, value: str) -> str:
        return check_bus_url(value)

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


def check_bus_url(value: str) -> str:
    """``value`` if empty or its scheme is one the bus factory knows; else ValueError."""
    if value and value.split("://", 1)[0].lower() not in BUS_ALIASES:
        known = ", ".join(f"{name}://" for name in BUS_ALIASES)
        raise ValueError(f"must start with one of {known}")
    return value


def readable_file(value: Path | None) -> Path | None:
    """``value`` if None or a file this user can read; else ValueError saying which."""
    if value is None:
        return None
    if not value.is_file():
        raise ValueError(f"{value} is not a file")
    if not os.access(value, os.R_OK):
        raise ValueError(f"{value} is not readable by this user")
    return value
