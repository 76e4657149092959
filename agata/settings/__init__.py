"""Settings, split by side: what every process reads (:class:`SharedSettings`: the bus, the
data folder, logging, the poll interval, task processes), what the cloud reads
(:class:`CloudSettings`) and what a device reads (:class:`EdgeSettings`).
:class:`Settings` is both, for a process that runs both sides.

========================  ====================================================
``shared_settings``       :class:`SharedSettings`, the checks both sides use
``cloud_settings``        :class:`CloudSettings`
``edge_settings``         :class:`EdgeSettings`
``settings``              :class:`Settings` (both sides)
``settings_loader``       :func:`load_settings`: flags > ``AGATA_*`` > file > defaults
========================  ====================================================
"""

from agata.settings.cloud_settings import CloudSettings
from agata.settings.edge_settings import EdgeSettings
from agata.settings.settings import Settings
from agata.settings.settings_loader import ENV_PREFIX, load_settings, read_config_file
from agata.settings.shared_settings import SharedSettings

__all__ = [
    "ENV_PREFIX",
    "CloudSettings",
    "EdgeSettings",
    "Settings",
    "SharedSettings",
    "load_settings",
    "read_config_file",
]
