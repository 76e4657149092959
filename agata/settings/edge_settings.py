"""The settings of the device side: the agent and the edge gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from agata.settings.shared_settings import SharedSettings, check_bus_url, readable_file

__all__ = ["EdgeSettings"]


class EdgeSettings(SharedSettings):
    """What ``agata edge run`` and ``agata edge gateway`` read (and the shared settings)."""

    cloud_url: str = "http://127.0.0.1:8000"
    edge_bus_url: str = Field("", description="broker of the device (original deployment)")
    device_file: Path | None = None
    policy: Literal["one", "all"] = "one"
    max_tasks: int = Field(4, ge=1)
    quarantine_seconds: float = Field(3600.0, ge=0)
    run_end_grace: float = Field(
        2.0, ge=0, le=60, description="seconds a failed client side waits for news of its run's end"
    )
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

    @field_validator("ca_file", mode="before")
    @classmethod
    def _empty_edge_file_is_none(cls, value: Any) -> Any:
        return None if value == "" else value  # AGATA_CA_FILE= unsets the file

    @field_validator("ca_file")
    @classmethod
    def _readable_ca_file(cls, value: Path | None) -> Path | None:
        return readable_file(value)

    @field_validator("edge_bus_url")
    @classmethod
    def _known_edge_bus_scheme(cls, value: str) -> str:
        return check_bus_url(value)
