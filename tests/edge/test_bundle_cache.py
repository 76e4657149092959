"""Bundle downloads: verified, atomic, reused, retried then refused (real HTTP server)."""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers import free_port

from agata.edge.bundle_cache import MANIFEST, BundleCache
from agata.edge.cloud_client import CloudClient, TaskOffer
from agata.errors import AgataError, ErrorCode
from agata.retry import Backoff, is_transient
from edge.fileserver import FileServer, file_server

CLIENT = b"print('client')\n"
HELPER = b"VALUE = 1\n"


def listing(**files: bytes) -> list[dict[str, object]]:
    return [
        {
            "name": name.replace("_py", ".py"),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        for name, data in files.items()
    ]


def make_offer(version: int = 1, files: list[dict[str, object]] | None = None) -> TaskOffer:
    return TaskOffer.model_validate(
        {
            "ID": "t1",
            "version": version,
            "files": listing(client_py=CLIENT, helper_py=HELPER) if files is None else files,
            "download_url": "/download/t1/",
        }
    )


@pytest.fixture
def server() -> Iterator[FileServer]:
    with file_server() as running:
        running.routes["/download/t1/client.py"] = (200, CLIENT, "application/octet-stream")
        running.routes["/download/t1/helper.py"] = (200, HELPER, "application/octet-stream")
        yield running


@pytest.fixture
async def client(server: FileServer) -> AsyncIterator[CloudClient]:
    async with CloudClient(server.url, credential="device-secret") as cloud:
        yield cloud


def cache_for(tmp_path: Path, client: CloudClient, attempts: int = 3) -> BundleCache:
    return BundleCache(tmp_path / "bundles", client, attempts=attempts, backoff=Backoff(0.01, 0.02))


async def test_download_verifies_and_places_the_bundle(
    tmp_path: Path, server: FileServer, client: CloudClient
) -> None:
    cache = cache_for(tmp_path, client)

    folder = await cache.ensure(make_offer())

    assert folder == tmp_path / "bundles" / "task_t1" / "v1"
    assert (folder / "client.py").read_bytes() == CLIENT
    assert (folder / "helper.py").read_bytes() == HELPER
    assert (folder / MANIFEST).is_file()
    assert sorted(server.paths()) == ["/download/t1/client.py", "/download/t1/helper.py"]
    assert all(r.headers["Authorization"] == "Bearer device-secret" for r in server.requests)
    assert [p.name for p in folder.parent.iterdir()] == ["v1"]  # no temporary left


async def test_an_unchanged_bundle_is_reused_without_a_request(
    tmp_path: Path, server: FileServer, client: CloudClient
) -> None:
    await cache_for(tmp_path, client).ensure(make_offer())
    server.requests.clear()

    folder = await cache_for(tmp_path, client).ensure(make_offer())  # a fresh agent

    assert server.requests == []
    assert (folder / "client.py").read_bytes() == CLIENT


async def test_a_new_version_downloads_only_the_changed_files(
    tmp_path: Path, server: FileServer, client: CloudClient
) -> None:
    cache = cache_for(tmp_path, client)
    await cache.ensure(make_offer())
    server.requests.clear()
    new_helper = b"VALUE = 2\n"
    server.routes["/download/t1/helper.py"] = (200, new_helper, "application/octet-stream")

    folder = await cache.ensure(make_offer(2, listing(client_py=CLIENT, helper_py=new_helper)))
    cache.prune("t1", keep={"2"})

    assert server.paths() == ["/download/t1/helper.py"]
    assert (folder / "client.py").read_bytes() == CLIENT
    assert (folder / "helper.py").read_bytes() == new_helper
    assert [p.name for p in folder.parent.iterdir()] == ["v2"]


async def test_a_tampered_file_is_retried_then_refused(
    tmp_path: Path, server: FileServer, client: CloudClient
) -> None:
    server.routes["/download/t1/helper.py"] = (200, b"VALUE = 7\n", "application/octet-stream")
    cache = cache_for(tmp_path, client, attempts=3)

    with pytest.raises(AgataError) as caught:
        await cache.ensure(make_offer())

    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert "does not match the listing" in caught.value.message
    assert "after 3 attempts" in caught.value.message
    assert not is_transient(caught.value)
    assert server.paths().count("/download/t1/helper.py") == 3
    assert list((tmp_path / "bundles" / "task_t1").iterdir()) == []


async def test_a_file_missing_on_the_server_is_not_found(
    tmp_path: Path, server: FileServer, client: CloudClient
) -> None:
    del server.routes["/download/t1/helper.py"]

    with pytest.raises(AgataError) as caught:
        await cache_for(tmp_path, client, attempts=2).ensure(make_offer())

    assert caught.value.code is ErrorCode.NOT_FOUND


async def test_a_file_longer_than_listed_is_cut_short(
    tmp_path: Path, server: FileServer, client: CloudClient
) -> None:
    server.routes["/download/t1/helper.py"] = (200, HELPER * 1000, "application/octet-stream")

    with pytest.raises(AgataError) as caught:
        await cache_for(tmp_path, client, attempts=1).ensure(make_offer())

    assert caught.value.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize(
    "name",
    [
        "../evil.py",
        "a/b.py",
        ".hidden",
        ".gitignore",
        ".agata-bundle.json",
        "..",
        "x\\y.py",
        "a\nb",
        "a:b.py",
        "evil\u202eyp.exe",
        "\uff0e\uff0e\uff0fx",
        "server.",
        unicodedata.normalize("NFD", "données.csv"),
    ],
    ids=ascii,
)
async def test_names_that_are_not_plain_are_refused_before_any_request(
    tmp_path: Path, server: FileServer, client: CloudClient, name: str
) -> None:
    files = [*listing(client_py=CLIENT), {"name": name, "size": 1, "sha256": "0" * 64}]

    with pytest.raises(AgataError, match="bundle listing refused"):
        await cache_for(tmp_path, client).ensure(make_offer(files=files))

    assert server.requests == []


async def test_an_empty_listing_is_refused(tmp_path: Path, client: CloudClient) -> None:
    with pytest.raises(AgataError, match="lists no files"):
        await cache_for(tmp_path, client).ensure(make_offer(files=[]))


async def test_an_unreachable_cloud_is_a_transient_error(tmp_path: Path) -> None:
    async with CloudClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(AgataError) as caught:
            await cache_for(tmp_path, client, attempts=2).ensure(make_offer())

    assert is_transient(caught.value)
    assert caught.value.code is ErrorCode.UNAVAILABLE


async def test_a_damaged_cached_bundle_is_downloaded_again(
    tmp_path: Path, server: FileServer, client: CloudClient
) -> None:
    cache = cache_for(tmp_path, client)
    folder = await cache.ensure(make_offer())
    (folder / "helper.py").write_bytes(b"truncated")
    server.requests.clear()

    again = await cache.ensure(make_offer())

    assert (again / "helper.py").read_bytes() == HELPER
    assert "/download/t1/helper.py" in server.paths()
