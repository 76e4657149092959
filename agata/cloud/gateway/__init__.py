"""The HTTP gateway: operations, files, streams, health, metrics and the web UI."""

from agata.cloud.gateway.app import GatewayConfig, create_gateway

__all__ = ["GatewayConfig", "create_gateway"]
