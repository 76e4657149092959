"""Random payloads at every operation: a clear 4xx or a success, never a 500."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agata.bus import create_bus
from agata.bus.service import Service
from agata.cloud.bundles.artifact_store import ArtifactStore
from agata.cloud.bundles.bundle_store import BundleStore
from agata.cloud.services.device_registry import DeviceRegistry
from agata.cloud.services.task_manager import TaskManager
from agata.store.store_factory import create_store

# Operations that start processes are exercised elsewhere with real bundles.
SKIPPED = {"rpc_exec_start_server_task"}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["t1", "dev-1", "../../x", "", "x" * 5000, "data_qnt > 5", "__import__"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def payloads(service: Service) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    names = sorted(set(service.operations) - SKIPPED)

    def for_operation(name: str) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
        fields = list(service.operations[name].model.model_fields)
        keys = st.sampled_from([*fields, "bogus"]) if fields else st.just("bogus")
        return st.tuples(st.just(name), st.dictionaries(keys, values, max_size=len(fields) + 1))

    return st.sampled_from(names).flatmap(for_operation)


class Harness:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="agata-fuzz-"))
        self.store = create_store(f"sqlite:///{self.folder / 'fuzz.db'}")
        self.bus = create_bus("memory://")
        self.manager = TaskManager(
            self.bus,
            self.store,
            BundleStore(self.folder / "tasks"),
            self.folder / "work",
            artifacts=ArtifactStore(self.folder / "artifacts"),
        )
        self.registry = DeviceRegistry(self.bus, self.store)


HARNESS = Harness()


async def check(service: Service, operation: str, payload: dict[str, Any]) -> None:
    await HARNESS.bus.connect()
    body = json.dumps(payload).encode()
    reply = json.loads(await service.handle(operation, body))
    assert reply["status_code"] in {200, 400, 401, 404, 409, 413}, (operation, payload, reply)
    if reply["status_code"] != 200:
        assert reply["exception"]
        assert "Traceback" not in reply["exception"]
        assert "sqlalchemy" not in reply["exception"].lower()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(payloads(HARNESS.manager))
async def test_task_manager_operations(case: tuple[str, dict[str, Any]]) -> None:
    await check(HARNESS.manager, *case)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(payloads(HARNESS.registry))
async def test_device_registry_operations(case: tuple[str, dict[str, Any]]) -> None:
    await check(HARNESS.registry, *case)
