"""A device without an index builds a task's environment from the cloud's wheelhouse.

A real cloud serves a folder holding a small wheel built in the test; a real agent
configured offline (``env_no_index``, so neither uv nor pip reaches an index) runs a
task whose requirements.txt needs it: the client side imports it and finishes. A wheel
that does not match the listing is refused with the reason, and nothing of it is kept.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cloud_harness import Cloud, running_cloud
from runtime.test_environments import make_wheel

from agata.edge.cloud_client import CloudClient
from agata.edge.wheelhouse import WheelhouseMirror
from edge.conftest import (
    SERVER_PY,
    Device,
    Events,
    enroll,
    eventually,
    running_agent,
    work_folder,
)

CLIENT_PY = """
import os, sys
import agatatoy
from agata.runtime import TaskReporter
r = TaskReporter()
with open(os.path.join(sys.argv[1], "imported.txt"), "w") as out:
    out.write(agatatoy.VALUE)
r.finished()
"""


@pytest.fixture
async def wheel_cloud(tmp_path: Path) -> AsyncIterator[tuple[Cloud, Path]]:
    """A cloud serving ``<tmp>/wheels``; its own server sides install from a copy."""
    wheels = tmp_path / "wheels"
    make_wheel(wheels)
    own = tmp_path / "cloud-wheels"
    shutil.copytree(wheels, own)
    flags = {"wheelhouse": wheels, "env_find_links": str(own), "env_no_index": True}
    async with running_cloud(tmp_path, **flags) as cloud:
        yield cloud, wheels


async def start_task(cloud: Cloud) -> None:
    body = {"task_id": "t1", "host": "127.0.0.1", "port": 8080, "files_paths": []}
    created = await cloud.op("rpc_exec_create_task", body)
    assert created.status_code == 200, created.text
    files = [
        ("files", ("server.py", SERVER_PY.encode())),
        ("files", ("client.py", CLIENT_PY.encode())),
        ("files", ("requirements.txt", b"agatatoy==1.0\n")),
    ]
    uploaded = await cloud.http.post("/api/tasks/t1/files", files=files, headers=cloud.auth)
    assert uploaded.status_code == 200, uploaded.text
    started = await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})
    assert started.status_code == 200, started.text


async def offline_device(cloud: Cloud, tmp_path: Path) -> Device:
    data_dir = tmp_path / "device"
    return Device(cloud, data_dir, await enroll(cloud, "dev1", data_dir), Events())


async def test_an_offline_device_installs_from_the_clouds_wheelhouse(
    wheel_cloud: tuple[Cloud, Path], tmp_path: Path
) -> None:
    cloud, _wheels = wheel_cloud
    device = await offline_device(cloud, tmp_path)
    await start_task(cloud)
    async with running_agent(device.agent(env_no_index=True)) as agent:
        await eventually(lambda: "t1" in agent.state.finished, timeout=60, what="t1 finished")

        assert agent.quarantine() == []
        assert agent.wheelhouse.downloads == 1
        cached = agent.edge_dir / "wheelhouse" / "agatatoy-1.0-py3-none-any.whl"
        assert cached.is_file()
    assert (work_folder(device.data_dir, "t1") / "imported.txt").read_text() == "agatatoy"


async def test_a_wheel_that_does_not_match_the_listing_is_refused(
    wheel_cloud: tuple[Cloud, Path], tmp_path: Path
) -> None:
    # Prepare: the cloud has listed the wheel; then its bytes change, size and mtime kept
    cloud, wheels = wheel_cloud
    listed = await cloud.http.get("/wheelhouse/", headers=cloud.auth)
    assert listed.status_code == 200, listed.text
    wheel = wheels / "agatatoy-1.0-py3-none-any.whl"
    before = wheel.stat()
    data = bytearray(wheel.read_bytes())
    data[-1] ^= 0xFF
    wheel.write_bytes(bytes(data))
    os.utime(wheel, ns=(before.st_atime_ns, before.st_mtime_ns))
    device = await offline_device(cloud, tmp_path)

    # Execute
    await start_task(cloud)
    async with running_agent(device.agent(env_no_index=True)) as agent:
        [entry] = await eventually(agent.quarantine, timeout=60, what="t1 quarantined")

        # Assert: refused with both sums named, nothing of it kept
        assert "agatatoy-1.0-py3-none-any.whl" in entry.reason
        assert listed.json()["wheels"][0]["sha256"] in entry.reason
        assert "refused" in entry.reason
        assert os.listdir(agent.edge_dir / "wheelhouse") == []


async def test_the_mirror_downloads_only_what_it_lacks(
    wheel_cloud: tuple[Cloud, Path], tmp_path: Path
) -> None:
    cloud, wheels = wheel_cloud
    cache = tmp_path / "mirror"
    credential = await enroll(cloud, "dev1", tmp_path / "device")
    async with CloudClient(cloud.node.url, credential=credential) as client:
        mirror = WheelhouseMirror(client, cache)
        first = await mirror.find_links()
        again = await mirror.find_links()
        make_wheel(wheels, name="agatasecond")
        more = await mirror.find_links()

    assert first == again == more == ["--find-links", str(cache)]
    assert mirror.downloads == 2  # agatatoy once, then agatasecond
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [
        "agatasecond-1.0-py3-none-any.whl",
        "agatatoy-1.0-py3-none-any.whl",
    ]


async def test_no_wheelhouse_or_no_credential_adds_nothing(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        credential = await enroll(cloud, "dev1", tmp_path / "device")
        async with CloudClient(cloud.node.url, credential=credential) as client:
            none_served = await WheelhouseMirror(client, tmp_path / "a").find_links()
        async with CloudClient(cloud.node.url) as anonymous:
            refused = await WheelhouseMirror(anonymous, tmp_path / "b").find_links()

    assert none_served == [] and refused == []
