"""A split cloud with replicas (agata/simulate/cloud_process.py ``CloudProcesses``): the
processes it would start, their names and the gateways, without starting them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agata.errors import AgataError
from agata.simulate.cloud_process import CloudProcesses

AMQP = "amqp://agata:agata@127.0.0.1:1/"


def test_replicas_get_names_of_their_own(tmp_path: Path) -> None:
    cloud = CloudProcesses(tmp_path, bus_url=AMQP, replicas={"gateway": 2, "task-manager": 2})

    names = [part.name for part in cloud.parts]

    assert names == ["task-manager-1", "task-manager-2", "device-registry", "gateway-1",
                     "gateway-2"]  # fmt: skip
    assert len(set(names)) == len(names)  # each its own output and log file
    assert [g.name for g in cloud.gateways] == ["gateway-1", "gateway-2"]
    assert cloud.gateway is cloud.gateways[0]


def test_one_of_each_by_default(tmp_path: Path) -> None:
    cloud = CloudProcesses(tmp_path, bus_url=AMQP)

    assert [p.name for p in cloud.parts] == ["task-manager", "device-registry", "gateway"]


@pytest.mark.parametrize("replicas", [{"gateway": 0}, {"scheduler": 1}])
def test_refuses_replicas_that_make_no_cloud(tmp_path: Path, replicas: dict[str, int]) -> None:
    with pytest.raises(AgataError, match="at least one of each"):
        CloudProcesses(tmp_path, bus_url=AMQP, replicas=replicas)
