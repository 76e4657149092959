"""A task's kind: ``script`` (the original's contract, the default) or ``flower-app``;
an optional field of create/update, shown in the task's record and in its offers."""

from __future__ import annotations

from pathlib import Path

from cloud_harness import running_cloud


async def test_kind_defaults_to_script_and_is_kept_as_given(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        base = {"host": "127.0.0.1", "port": 8080}
        seed = await cloud.op("rpc_exec_create_task", {"task_id": "t1", **base})
        app_body = {"task_id": "t2", "kind": "flower-app", **base}
        app = await cloud.op("rpc_exec_create_task", app_body)
        changed = await cloud.op("rpc_exec_update_task", {"task_id": "t1", "kind": "flower-app"})

        assert (seed.status_code, app.status_code, changed.status_code) == (200, 200, 200)
        first = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "t2"})).json()
        assert first["kind"] == "flower-app"
        assert cloud.node.store.get_task("t1").kind == "flower-app"


async def test_an_unknown_kind_is_a_400_naming_the_field_and_stores_nothing(
    tmp_path: Path,
) -> None:
    async with running_cloud(tmp_path) as cloud:
        body = {"task_id": "t1", "host": "127.0.0.1", "port": 8080, "kind": "docker"}
        reply = await cloud.op("rpc_exec_create_task", body)

        assert reply.status_code == 400
        assert "kind" in reply.text
        listed = (await cloud.op("rpc_exec_list_tasks", {})).json()
        assert listed == []
