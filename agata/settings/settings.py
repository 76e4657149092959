"""Every setting of both sides, for a process that runs both (``agata demo``, tests)."""

from __future__ import annotations

from agata.settings.cloud_settings import CloudSettings
from agata.settings.edge_settings import EdgeSettings

__all__ = ["Settings"]


class Settings(CloudSettings, EdgeSettings):
    """The cloud's and the edge's settings together (each keeps its own validation)."""
