"""Task passwords (HTTP Basic of devices of the original system) against a real cloud.

The store keeps only a hash; an offer to a device of the original system carries a
password made for that device; the operator's own password still works.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cloud_harness import Cloud, running_cloud

from security.test_legacy_devices import DOCUMENTED, PASSWORD, USERNAME, create_running_task


async def legacy_offer(cloud: Cloud, user_id: str, task_id: str) -> dict[str, str]:
    await cloud.op("rpc_exec_update_user_info", {"user_id": user_id}, token=None)
    asked = await cloud.op("rpc_exec_client_requesting_task", {"client_id": user_id}, token=None)
    assert asked.status_code == 200, asked.text
    return next(offer for offer in asked.json() if offer["ID"] == task_id)


async def download(cloud: Cloud, task_id: str, username: str, password: str) -> int:
    got = await cloud.http.get(f"/download/{task_id}/client.py", auth=(username, password))
    return got.status_code


async def test_a_device_password_works_for_its_task_only(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, legacy_devices=True) as cloud:
        await create_running_task(cloud, "t1", DOCUMENTED)
        await create_running_task(cloud, "t2", DOCUMENTED)
        offer_a = await legacy_offer(cloud, "old-a", "t1")
        offer_b = await legacy_offer(cloud, "old-b", "t1")
        mac_a = offer_a["password"].rpartition(":")[2]

        assert offer_a["username"] == USERNAME
        assert offer_a["password"].startswith("agata-dl:old-a:")
        assert PASSWORD not in offer_a["password"] and offer_a["password"] != offer_b["password"]
        assert await download(cloud, "t1", USERNAME, offer_a["password"]) == 200
        assert await download(cloud, "t1", USERNAME, offer_b["password"]) == 200
        assert await download(cloud, "t2", USERNAME, offer_a["password"]) == 401
        assert await download(cloud, "t1", USERNAME, f"agata-dl:old-b:{mac_a}") == 401
        assert await download(cloud, "t1", "someone", offer_a["password"]) == 401


async def test_the_operator_password_works_and_wrong_ones_get_401(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, legacy_devices=True) as cloud:
        await create_running_task(cloud, "t1", DOCUMENTED)

        for _ in range(2):  # the second is answered from the verified cache
            assert await download(cloud, "t1", USERNAME, PASSWORD) == 200
        assert await download(cloud, "t1", USERNAME, PASSWORD + "x") == 401
        assert await download(cloud, "t1", USERNAME, "") == 401
        assert await download(cloud, "t1", USERNAME, "agata-dl:old-a:bogus") == 401
        got = await cloud.http.get("/download/t1/client.py", auth=(USERNAME, PASSWORD + "x"))
        assert "wrong task username or password" in got.text


async def test_changing_the_password_ends_the_old_ones(tmp_path: Path) -> None:
    async with running_cloud(tmp_path, legacy_devices=True) as cloud:
        await create_running_task(cloud, "t1", DOCUMENTED)
        before = await legacy_offer(cloud, "old-a", "t1")
        assert await download(cloud, "t1", USERNAME, PASSWORD) == 200  # now remembered

        changed = await cloud.op(
            "rpc_exec_update_task", {"task_id": "t1", "password": "another-password"}
        )
        assert changed.status_code == 200, changed.text
        after = await legacy_offer(cloud, "old-a", "t1")

        assert await download(cloud, "t1", USERNAME, before["password"]) == 401
        assert await download(cloud, "t1", USERNAME, PASSWORD) == 401
        assert after["password"] != before["password"]
        assert await download(cloud, "t1", USERNAME, after["password"]) == 200
        assert await download(cloud, "t1", USERNAME, "another-password") == 200


async def test_neither_the_database_nor_an_operation_shows_the_password(
    tmp_path: Path,
) -> None:
    async with running_cloud(tmp_path, legacy_devices=True) as cloud:
        await create_running_task(cloud, "t1", DOCUMENTED)
        got = await cloud.op("rpc_exec_get_task_by_id", {"task_id": "t1"})
        listed = await cloud.op("rpc_exec_list_tasks", {})

    assert got.status_code == 200 and listed.status_code == 200
    for text in (got.text, listed.text):
        assert PASSWORD not in text and "scrypt$" not in text and "password" not in text
    databases = list((tmp_path / "cloud").rglob("*.db"))
    assert databases
    for database in databases:
        raw = sqlite3.connect(database)
        try:
            (stored,) = raw.execute("SELECT password FROM tasks WHERE task_id = 't1'").fetchone()
        finally:
            raw.close()
        assert stored.startswith("scrypt$") and PASSWORD not in stored
        assert PASSWORD.encode() not in database.read_bytes()
