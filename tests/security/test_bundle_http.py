"""Hostile bundle names over HTTP: what ``tests/cloud/test_bundles.py`` checks on the
bundle store, through the multipart upload and the download route of the real gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cloud_harness import Cloud, create_bundle_task, running_cloud

UPLOAD_NAMES = [
    "../../../../tmp/agata-evil",
    "/etc/agata-evil",
    "dir/server.py",
    "..",
    "evil\u202eyp.exe",
    "\uff0e\uff0e\uff0fagata-evil",
    "x" * 300,
]
DOWNLOAD_PATHS = [
    "/download/t1/..%2F..%2F..%2Fetc%2Fpasswd",
    "/download/t1/%2e%2e",
    "/download/t1/%2Fetc%2Fpasswd",
    "/download/t1/%E2%80%AEyp.exe",
    "/download/t1/%00",
    "/download/t1/nope.py",
    "/download/t1/" + "x" * 300,
]


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path) as running:
        await create_bundle_task(running, "t1")
        yield running


def outside_files(cloud: Cloud) -> set[Path]:
    """Files named like the attack's in the data folder but outside the bundle, or in /tmp."""
    bundle = cloud.node.bundles.root / "task_t1"
    found = {
        p
        for p in cloud.node.data_dir.rglob("*")
        if "agata-evil" in p.name and bundle not in p.parents
    }
    return found | {p for p in [Path("/tmp/agata-evil")] if p.exists()}


@pytest.mark.parametrize("name", UPLOAD_NAMES, ids=ascii)
async def test_a_hostile_upload_name_writes_nothing(cloud: Cloud, name: str) -> None:
    before = (await cloud.http.get("/api/tasks/t1/files", headers=cloud.auth)).json()
    files = [("files", ("fine.py", b"x")), ("files", (name, b"evil"))]

    response = await cloud.http.post("/api/tasks/t1/files", files=files, headers=cloud.auth)
    after = (await cloud.http.get("/api/tasks/t1/files", headers=cloud.auth)).json()

    assert response.status_code == 400, response.text
    assert after == before
    assert not outside_files(cloud)


async def test_a_windows_path_keeps_only_its_last_part(cloud: Cloud) -> None:
    # python-multipart drops a drive path from a filename (old browsers sent them).
    files = [("files", ("C:\\Users\\x\\agata-evil", b"evil"))]

    response = await cloud.http.post("/api/tasks/t1/files", files=files, headers=cloud.auth)

    assert response.status_code == 200
    assert "agata-evil" in {f["name"] for f in response.json()}
    assert not outside_files(cloud)


async def test_a_zero_byte_file_is_a_file(cloud: Cloud) -> None:
    response = await cloud.http.post(
        "/api/tasks/t1/files", files=[("files", ("empty.txt", b""))], headers=cloud.auth
    )
    download = await cloud.http.get("/download/t1/empty.txt", headers=cloud.auth)

    assert response.status_code == 200
    sizes = {f["name"]: f["size"] for f in response.json()}
    assert sizes["empty.txt"] == 0
    assert download.status_code == 200
    assert download.content == b""


@pytest.mark.parametrize("path", DOWNLOAD_PATHS, ids=ascii)
async def test_a_hostile_download_path_finds_nothing(cloud: Cloud, path: str) -> None:
    response = await cloud.http.get(path, headers=cloud.auth)

    assert response.status_code == 404, response.text
    assert b"root:" not in response.content
