"""The cloud's wheelhouse (``--wheelhouse DIR``) over real HTTP: listed with SHA-256,
served to devices and operators only, names checked."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cloud_harness import running_cloud
from runtime.test_environments import make_wheel
from security.harness import enroll


async def test_devices_and_operators_get_the_listing_and_the_files(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheel = make_wheel(wheels)
    (wheels / "notes.txt").write_text("not a wheel")
    (wheels / ".hidden-1.0-py3-none-any.whl").write_bytes(b"hidden")
    (wheels / "sub.whl").mkdir()
    outside = tmp_path / "secret-1.0-py3-none-any.whl"
    outside.write_bytes(b"outside the wheelhouse")
    os.symlink(outside, wheels / "linked-1.0-py3-none-any.whl")
    async with running_cloud(tmp_path, wheelhouse=wheels) as cloud:
        credential = await enroll(cloud, "dev1")
        device = {"Authorization": f"Bearer {credential}"}

        listing = await cloud.http.get("/wheelhouse/", headers=device)
        as_operator = await cloud.http.get("/wheelhouse/", headers=cloud.auth)
        got = await cloud.http.get(f"/wheelhouse/{wheel.name}", headers=device)
        anonymous = await cloud.http.get("/wheelhouse/")
        anonymous_file = await cloud.http.get(f"/wheelhouse/{wheel.name}")
        refused = {
            name: (await cloud.http.get(f"/wheelhouse/{name}", headers=device)).status_code
            for name in (
                "notes.txt",
                ".hidden-1.0-py3-none-any.whl",
                "sub.whl",
                "linked-1.0-py3-none-any.whl",
                "..%2Fsecret-1.0-py3-none-any.whl",
                "missing-1.0-py3-none-any.whl",
            )
        }

    data = wheel.read_bytes()
    expected = [{"name": wheel.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    assert listing.status_code == 200 and listing.json() == {"wheels": expected}
    assert as_operator.json() == listing.json()
    assert got.status_code == 200 and got.content == data
    assert anonymous.status_code == 401 and anonymous_file.status_code == 401
    assert "a device credential or an operator token is required" in anonymous.text
    assert set(refused.values()) == {404}, refused


async def test_a_changed_wheel_is_listed_with_its_new_sum(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheel = make_wheel(wheels)
    async with running_cloud(tmp_path, wheelhouse=wheels) as cloud:
        first = (await cloud.http.get("/wheelhouse/", headers=cloud.auth)).json()
        make_wheel(wheels, padding=64)  # same name, other content
        second = (await cloud.http.get("/wheelhouse/", headers=cloud.auth)).json()

    assert first["wheels"][0]["sha256"] != second["wheels"][0]["sha256"]
    assert second["wheels"][0]["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()


async def test_without_a_wheelhouse_the_listing_is_404(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        got = await cloud.http.get("/wheelhouse/", headers=cloud.auth)

    assert got.status_code == 404 and "serves no wheelhouse" in got.text


def test_a_wheelhouse_that_is_not_a_folder_is_refused_at_start(tmp_path: Path) -> None:
    from agata.errors import AgataError
    from agata.settings import load_settings

    try:
        load_settings(flags={"wheelhouse": tmp_path / "nope"}, environ={})
    except AgataError as exc:
        assert "wheelhouse" in exc.message and "not a folder" in exc.message
    else:
        raise AssertionError("accepted a missing wheelhouse folder")
