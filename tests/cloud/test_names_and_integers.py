"""Over real HTTP against a real cloud (issue 14): one name rule for uploads, zips and
listings (item 6), and integers no store can keep refused before anything is written
(item 8), on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cloud_harness import Cloud, create_bundle_task, running_cloud
from hypothesis import given
from hypothesis import strategies as st

from agata.cloud.bundles.bundle_rules import validate_file_name as cloud_check
from agata.edge.bundle_cache import check_file_name as agent_check
from agata.errors import AgataError

SHA = "ab" * 32
AGENT_REFUSES = [".gitignore", ".hidden", ".agata-bundle.json"]


async def listing(cloud: Cloud, task_id: str) -> tuple[int, list[dict[str, Any]]]:
    task = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": task_id})).json()
    files: list[dict[str, Any]] = task["files"]
    return task["version"], files


def _accepted(check: Any, name: str) -> bool:
    try:
        return check(name) in (None, name)
    except AgataError:
        return False


@given(st.one_of(st.text(max_size=12), st.sampled_from([*AGENT_REFUSES, ".x", "a.b", "é"])))
def test_the_cloud_stores_exactly_the_names_agents_accept(name: str) -> None:
    """A name the cloud keeps as it is (uploads, zips, listings) is one every agent takes,
    and the other way round."""
    assert _accepted(cloud_check, name) == _accepted(agent_check, name)


@pytest.mark.parametrize("name", AGENT_REFUSES)
async def test_uploads_refuse_the_names_every_agent_refuses(cloud: Cloud, name: str) -> None:
    with pytest.raises(AgataError):
        agent_check(name)  # what an agent would do with the listing
    await create_bundle_task(cloud, "t1")
    before = await listing(cloud, "t1")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(name, b"x")

    plain = await cloud.http.post(
        "/api/tasks/t1/files", files=[("files", (name, b"x"))], headers=cloud.auth
    )
    zipped_upload = await cloud.http.post(
        "/api/tasks/t1/files",
        files=[("files", ("bundle.zip", archive.getvalue()))],
        headers=cloud.auth,
    )

    # Before: 200, and every agent then refused the whole bundle of the task.
    assert plain.status_code == 400 and "hidden" in plain.json()["detail"]
    assert zipped_upload.status_code == 400 and "hidden" in zipped_upload.json()["detail"]
    assert await listing(cloud, "t1") == before


@pytest.mark.parametrize("name", ["../../x", "a/b.py", *AGENT_REFUSES, "a\u202eb", "x."])
async def test_a_listing_is_held_to_the_same_rule(cloud: Cloud, name: str) -> None:
    await create_bundle_task(cloud, "t1")
    before = await listing(cloud, "t1")
    files = [
        {"name": "client.py", "size": 1, "sha256": SHA},
        {"name": name, "size": 1, "sha256": SHA},
    ]

    response = await cloud.op("rpc_exec_set_task_files", {"task_id": "t1", "files": files})

    assert response.status_code == 400, response.text  # before: 200 for "../../x"
    assert await listing(cloud, "t1") == before


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def any_store_cloud(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cloud]:
    flags: dict[str, object] = {}
    if request.param == "postgresql":
        flags["db_url"] = request.getfixturevalue("pg_schema_url")
    async with running_cloud(tmp_path, **flags) as cloud:
        yield cloud


async def test_a_huge_round_is_400_and_writes_nothing(any_store_cloud: Cloud) -> None:
    cloud = any_store_cloud
    await create_bundle_task(cloud, "t1", server_arguments=["1", "--hold"])
    assert (await cloud.op("rpc_exec_start_server_task", {"task_id": "t1"})).status_code == 200
    await cloud.op("rpc_exec_update_user_info", {"user_id": "pi-1"})
    body = {"user_id": "pi-1", "task_id": "t1", "status": "running", "metrics": {"acc": 0.5}}

    answers = [
        await cloud.op("rpc_exec_report_device_task", {**body, "round": bad})
        for bad in (2**63, 2**31, 10**25)
    ]
    infinite = await cloud.op(
        "rpc_exec_report_device_task", {**body, "round": 1, "metrics": {"acc": "Infinity"}}
    )

    # Before: 500 "Python int too large to convert to SQLite INTEGER", status written.
    assert [a.status_code for a in answers] == [400, 400, 400], [a.text for a in answers]
    assert infinite.status_code == 400, infinite.text
    devices = (await cloud.op("rpc_exec_get_task_devices", {"task_id": "t1"})).json()
    assert devices["states"] == []
    metrics = (await cloud.op("rpc_exec_get_task_metrics", {"task_id": "t1"})).json()
    assert [m for m in metrics if m["source"] == "pi-1"] == []


async def test_a_huge_file_size_is_400_and_writes_nothing(any_store_cloud: Cloud) -> None:
    cloud = any_store_cloud
    await create_bundle_task(cloud, "t1")
    before = await listing(cloud, "t1")

    answers = [
        await cloud.op(
            "rpc_exec_set_task_files",
            {"task_id": "t1", "files": [{"name": "big.bin", "size": size, "sha256": SHA}]},
        )
        for size in (10**25, 2**63)
    ]

    assert [a.status_code for a in answers] == [400, 400], [a.text for a in answers]
    assert await listing(cloud, "t1") == before
