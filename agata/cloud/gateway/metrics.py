"""Prometheus metrics of the gateway, in a registry of its own (no global state)."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from agata.bus.rpc import RpcClient
from agata.errors import AgataError
from agata.protocol import operations as ops

logger = logging.getLogger(__name__)


class GatewayMetrics:
    def __init__(self, rpc: RpcClient) -> None:
        self.rpc = rpc
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "agata_http_requests",
            "HTTP requests",
            ["method", "path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "agata_http_request_seconds",
            "HTTP request latency",
            ["method", "path"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )
        self.tasks_running = Gauge(
            "agata_tasks_running", "Tasks whose server side runs", registry=self.registry
        )
        self.devices = Gauge(
            "agata_devices", "Registered devices", ["online"], registry=self.registry
        )
        # The labelled series of each (method, route, status): a bounded set (routes are
        # the app's, unmatched paths share one label).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        key = (method, path, status)
        children = self._children.get(key)
        if children is None:  # labels() checks and locks: once per route and status
            children = self._children[key] = (
                self.requests.labels(method, path, str(status)),
                self.latency.labels(method, path),
            )
        children[0].inc()
        children[1].observe(seconds)

    async def render(self) -> tuple[bytes, str]:
        try:
            overview = await self.rpc.call(ops.GET_OVERVIEW, {}, timeout=5)
            self.tasks_running.set(overview["tasks_running"])
            self.devices.labels("true").set(overview["devices_online"])
            self.devices.labels("false").set(overview["devices_offline"])
        except AgataError as exc:
            logger.warning("metrics without fleet figures: %s", exc.message)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
