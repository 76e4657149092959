"""The message bus: request/reply RPC and fire-and-forget events between services.

The transport is chosen by URL (see :mod:`agata.bus.bus_factory`):

- ``memory://`` -- in-process, no broker (:mod:`agata.bus.memory_bus`);
- ``amqp://user:pass@host:port/vhost`` -- RabbitMQ (:mod:`agata.bus.amqp_bus`).

On top of any transport, :class:`~agata.bus.rpc.RpcClient` calls operations and
:class:`~agata.bus.service.Service` serves them, speaking the wire format of the
original system (see ``docs/bus.md``).
"""

from agata.bus.bus import Bus, Consumer, Delivery, Handler
from agata.bus.bus_factory import create_bus
from agata.bus.rpc import RpcClient
from agata.bus.service import Service

__all__ = ["Bus", "Consumer", "Delivery", "Handler", "RpcClient", "Service", "create_bus"]
