"""Per-device values in a task's client arguments, from this device's attributes.

The placeholders and their expansion are :mod:`agata.protocol.arguments` (the cloud
expands them the same way for devices of the original system); this module only takes
the values from the agent's :class:`DeviceInfo` and the offer. A placeholder the device
has no value for is an error naming it, which the agent treats like a client side that
failed to start.
"""

from __future__ import annotations

from agata.edge.device_info import DeviceInfo
from agata.protocol import arguments as shared
from agata.protocol.arguments import expand_client_arguments
from agata.protocol.offers import TaskOffer

__all__ = ["expand_client_arguments", "placeholder_values"]


def placeholder_values(device: DeviceInfo, offer: TaskOffer) -> dict[str, str]:
    """The values this device fills in, by placeholder name."""
    return shared.placeholder_values(
        user_id=device.user_id,
        numbers={
            "data_qnt": device.data_qnt,
            "avg_acc_contrib": device.avg_acc_contrib,
            "avg_disconnection_per_round": device.avg_disconnection_per_round,
        },
        sensors=device.sensors,
        extra=device.extra,
        host=offer.host,
        port=offer.port,
    )
