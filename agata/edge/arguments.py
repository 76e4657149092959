"""Per-device values in a task's client arguments.

Every device receives the same ``client_arguments``; placeholders let each one fill in
its own values, e.g. ``--client-index {client_index} --address {host}:{port}``:

- ``{user_id}``, ``{data_qnt}``, ``{avg_acc_contrib}``, ``{avg_disconnection_per_round}``,
  ``{sensors}`` (comma-separated) and any extra attribute of the device (its device
  file's other keys);
- ``{host}`` and ``{port}``: the task's, as the cloud lists them.

``{{`` and ``}}`` stand for literal braces; other text is left alone. A placeholder the
device has no value for is an error naming it: the task cannot run on that device as
configured, which the agent treats like a client side that failed to start.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from agata.edge.cloud_client import TaskOffer
from agata.edge.device_info import DeviceInfo
from agata.errors import AgataError, ErrorCode

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholder_values(device: DeviceInfo, offer: TaskOffer) -> dict[str, str]:
    """The values a device fills in, by placeholder name."""
    values: dict[str, str] = {}
    for key, value in device.extra.items():
        values[key] = _text(value)
    for key in ("data_qnt", "avg_acc_contrib", "avg_disconnection_per_round"):
        number = getattr(device, key)
        if number is not None:
            values[key] = _text(number)
    values["sensors"] = ",".join(device.sensors)
    values["user_id"] = device.user_id
    if offer.host:
        values["host"] = offer.host
    if offer.port is not None:
        values["port"] = str(offer.port)
    return values


def expand_client_arguments(arguments: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """``arguments`` with every ``{name}`` replaced by ``values[name]``."""

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "{{":
            return "{"
        if text == "}}":
            return "}"
        name = match.group(1)
        if name not in values:
            known = ", ".join(sorted(values)) or "none"
            raise AgataError(
                ErrorCode.INVALID_ARGUMENT,
                f"client_arguments use {{{name}}}, which this device has no value for "
                f"(known: {known}); add it to the device file or write {{{{{name}}}}} "
                "for the literal text",
            )
        return values[name]

    return [_PLACEHOLDER.sub(replace, argument) for argument in arguments]


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
