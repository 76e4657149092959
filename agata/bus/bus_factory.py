"""Pick a bus implementation by URL scheme (imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from agata.bus.bus import Bus
from agata.errors import AgataError, ErrorCode

#: scheme -> "module:Class"; the module is imported only when the scheme is used.
BUS_ALIASES: dict[str, str] = {
    "memory": "agata.bus.memory_bus:MemoryBus",
    "amqp": "agata.bus.amqp_bus:AmqpBus",
    "amqps": "agata.bus.amqp_bus:AmqpBus",
}


def create_bus(url: str, **options: Any) -> Bus:
    """Create (but do not connect) the bus named by ``url``."""
    scheme = urlsplit(url).scheme.lower()
    target = BUS_ALIASES.get(scheme)
    if target is None:
        known = ", ".join(f"{name}://" for name in BUS_ALIASES)
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT,
            f"unknown bus URL scheme {scheme!r} in {url!r}; use one of {known}",
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    bus: Bus = cls(url, **options)
    return bus
