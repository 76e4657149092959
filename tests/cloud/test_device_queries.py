"""rpc_exec_query_devices / rpc_exec_query_tasks / rpc_exec_delete_device over HTTP."""

from __future__ import annotations

from typing import Any

from cloud_harness import Cloud

from agata.store import NewTask


async def _fleet(cloud: Cloud) -> None:
    store = cloud.node.store
    store.create_task(
        NewTask(task_id="t1", host="h", port=1, username="", password="", tags=("mnist",))
    )
    for i in range(6):
        store.upsert_device(
            f"dev-{i}",
            data_qnt=float(i * 20),
            sensors=["camera"] if i % 2 else [],
            extra={"location": "lab" if i < 3 else "field", "battery": i * 10},
        )
    store.set_device_task_status("dev-1", "t1", "quarantined")


async def _query(cloud: Cloud, **body: Any) -> Any:
    response = await cloud.op("rpc_exec_query_devices", body)
    assert response.status_code == 200, response.text
    return response.json()


def _ids(page: Any) -> list[str]:
    return [d["user_id"] for d in page["items"]]


async def test_filters_terms_and_criteria(cloud: Cloud) -> None:
    await _fleet(cloud)

    assert _ids(await _query(cloud, q="location=lab")) == ["dev-0", "dev-1", "dev-2"]
    assert _ids(await _query(cloud, q="location=lab data_qnt>20")) == ["dev-2"]
    assert _ids(await _query(cloud, q="quarantined")) == ["dev-1"]
    assert _ids(await _query(cloud, q="sensor:camera battery>=30")) == ["dev-3", "dev-5"]
    assert _ids(await _query(cloud, q="task:t1")) == ["dev-1"]
    assert _ids(await _query(cloud, q="location>k")) == ["dev-0", "dev-1", "dev-2"]  # in Python
    assert _ids(await _query(cloud, q="user_id=dev-4")) == ["dev-4"]
    assert _ids(await _query(cloud, q="camera", sort="data_qnt", order="desc")) == [
        "dev-5",
        "dev-3",
        "dev-1",
    ]
    assert (await _query(cloud, q="online"))["total"] == 6
    assert (await _query(cloud, q="offline"))["total"] == 0
    criteria = await _query(cloud, q='(data_qnt >= 40) and location == "field"', limit=1)
    assert criteria["total"] == 3 and _ids(criteria) == ["dev-3"]
    nothing = await _query(cloud, q="location=moon")
    assert nothing == {"items": [], "total": 0}


async def test_bad_input_is_400_naming_the_part(cloud: Cloud) -> None:
    await _fleet(cloud)
    cases = {
        "limit": {"limit": 100_000},
        "offset": {"offset": -1},
        "sort": {"sort": "password"},
        "order": {"order": "sideways"},
        "q": {"q": "data_qnt > > 3"},
    }
    for part, body in cases.items():
        response = await cloud.op("rpc_exec_query_devices", body)
        assert response.status_code == 400, (part, response.text)
        assert part in response.json()["detail"], (part, response.text)
    number = await cloud.op("rpc_exec_query_devices", {"q": "data_qnt>abc"})
    assert number.status_code == 400
    assert "data_qnt is a number" in number.json()["detail"]


async def test_revoked_and_decommissioned_devices(cloud: Cloud) -> None:
    await _fleet(cloud)
    cloud.node.store.set_device_credential("dev-2", "h" * 64)

    assert (await cloud.op("rpc_exec_revoke_device", {"user_id": "dev-2"})).status_code == 200
    revoked = await _query(cloud, q="revoked")
    deleted = await cloud.op("rpc_exec_delete_device", {"user_id": "dev-1"})
    again = await cloud.op("rpc_exec_delete_device", {"user_id": "dev-1"})
    legacy = (await cloud.op("rpc_exec_list_devices", {})).json()

    assert _ids(revoked) == ["dev-2"] and revoked["items"][0]["revoked"] is True
    assert deleted.status_code == 200 and again.status_code == 404
    assert isinstance(legacy, list)  # the old shape for old clients
    assert [d["user_id"] for d in legacy] == ["dev-0", "dev-2", "dev-3", "dev-4", "dev-5"]


async def test_query_tasks_pages_and_filters(cloud: Cloud) -> None:
    await _fleet(cloud)

    page = (await cloud.op("rpc_exec_query_tasks", {"q": "tag:mnist stopped"})).json()
    none = (await cloud.op("rpc_exec_query_tasks", {"q": "running"})).json()
    bad = await cloud.op("rpc_exec_query_tasks", {"q": "owner:me"})
    bad_sort = await cloud.op("rpc_exec_query_tasks", {"sort": "password"})

    assert page["total"] == 1 and page["items"][0]["task_id"] == "t1"
    assert none == {"items": [], "total": 0}
    assert bad.status_code == 400 and "q" in bad.json()["detail"]
    assert bad_sort.status_code == 400 and "sort" in bad_sort.json()["detail"]
    assert isinstance((await cloud.op("rpc_exec_list_tasks", {})).json(), list)


async def test_a_filter_on_a_long_string_is_still_answered(cloud: Cloud) -> None:
    long = "y" * 1000  # longer than the index keeps (INDEXED_TEXT_MAX)
    cloud.node.store.upsert_device("dev-long", extra={"note": long})

    found = await _query(cloud, q=f"note={long}")

    assert _ids(found) == ["dev-long"]
