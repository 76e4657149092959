"""The edge gateway: the original deployment's "client gateway", bus -> cloud HTTP.

In the original system every device ran a RabbitMQ broker; the device's task manager
called ``rpc_exec_update_user_info`` and ``rpc_exec_client_requesting_task`` on it, and
a gateway process forwarded those calls to the cloud's HTTP gateway. ``agata edge
gateway --bus amqp://... --cloud-url ...`` keeps that deployment working: it consumes
the operation queues on the device's broker, sends each request to ``POST
/<operation>`` of the cloud and replies in the bus wire format (``{"status_code": 200,
"return": ...}`` or the cloud's status with ``exception``).

The AGATA agent itself needs none of this (it speaks HTTP); the gateway exists for
agents of the original system. Requests are validated with the same models as on the
cloud, so a malformed request is refused on the device (400) without a round trip.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from agata.bus.bus import Bus
from agata.bus.service import Service
from agata.edge.cloud_client import CloudClient
from agata.protocol import operations as ops

__all__ = ["FORWARDED", "EdgeGateway"]

logger = logging.getLogger(__name__)

#: The operations a device may call, forwarded as they are.
FORWARDED: dict[str, type[BaseModel]] = {
    ops.UPDATE_USER_INFO: ops.UpdateUserInfo,
    ops.CLIENT_REQUESTING_TASK: ops.ClientRequestingTask,
    ops.REPORT_DEVICE_TASK: ops.ReportDeviceTask,
}


class EdgeGateway(Service):
    """Serves :data:`FORWARDED` on the device's bus by calling the cloud over HTTP."""

    def __init__(self, bus: Bus, client: CloudClient) -> None:
        super().__init__(bus, "edge-gateway")
        self.client = client
        for name, model in FORWARDED.items():
            self.add_operation(name, model, self._forwarder(name))
        self.forwarded = 0

    def _forwarder(self, operation: str) -> Any:
        async def forward(request: BaseModel) -> Any:
            body = request.model_dump(mode="json", exclude_none=True)
            if operation == ops.CLIENT_REQUESTING_TASK:
                body["legacy"] = True  # offers in the form the original agent reads
            result = await self.client.call(operation, body)
            self.forwarded += 1
            return result

        return forward
