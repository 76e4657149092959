"""The settings of the cloud side: the store, the gateway, its limits, the services."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agata.settings.shared_settings import SharedSettings, readable_file
from agata.store.store_schemes import check_db_url

__all__ = ["CloudSettings"]


class CloudSettings(SharedSettings):
    """What ``agata cloud run`` reads (and the shared settings)."""

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
        "stop",
        description="tasks found marked running when the cloud starts (a previous run of "
        "it died): stop (mark them stopped, the default) or restart (start their server "
        "side again, a new run)",
    )
    ssl_certfile: Path | None = Field(
        None, description="PEM certificate (chain) of the gateway: it then serves HTTPS"
    )
    ssl_keyfile: Path | None = Field(
        None, description="unencrypted PEM private key of ssl_certfile (else read from it)"
    )
    ssl_ca_file: Path | None = Field(
        None,
        description="PEM CA certificate that signed ssl_certfile, which Flower App runs' "
        "SuperLinks name to their nodes (default: the certificate itself, self-signed)",
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

    @field_validator("ssl_certfile", "ssl_keyfile", "ssl_ca_file", "wheelhouse", mode="before")
    @classmethod
    def _empty_cloud_file_is_none(cls, value: Any) -> Any:
        return None if value == "" else value  # AGATA_SSL_CERTFILE= unsets a file setting

    @field_validator("ssl_certfile", "ssl_keyfile", "ssl_ca_file")
    @classmethod
    def _readable_tls_file(cls, value: Path | None) -> Path | None:
        return readable_file(value)

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
    def _key_with_certificate(self) -> CloudSettings:
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile is given without ssl_certfile (its certificate)")
        return self

    @field_validator("db_url")
    @classmethod
    def _known_db_scheme(cls, value: str) -> str:
        return check_db_url(value) if value else value

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'agata.db').resolve()}"
