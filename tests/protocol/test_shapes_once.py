"""Each shape that crosses a process is defined once, in agata.protocol, and every side
uses that definition (issue 15): the bundle file, the task offer, the task id rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cloud_harness import running_cloud

import agata.cloud.bundles.bundle_store as bundle_store
import agata.edge.cloud_client as cloud_client
import agata.store.store as store
from agata.cloud.gateway.web_protocol import PATH
from agata.errors import AgataError
from agata.protocol import operations as ops
from agata.protocol.bundle_files import BundleFile
from agata.protocol.fields import TASK_ID_PATTERN
from agata.protocol.notifications import NOTIFICATION_KINDS
from agata.protocol.offers import TaskOffer
from agata.web import STATIC_ROOT

SHA = "0" * 64


def test_one_bundle_file_for_store_bundle_store_edge_and_requests() -> None:
    assert store.BundleFile is BundleFile
    assert bundle_store.BundleFile is BundleFile
    assert cloud_client.BundleFile is BundleFile
    request = ops.SetTaskFiles.model_validate(
        {"task_id": "t1", "files": [{"name": "a.py", "size": 1, "sha256": SHA}]}
    )
    assert request.files == [BundleFile("a.py", 1, SHA)]


def test_one_task_offer_for_cloud_and_edge() -> None:
    assert cloud_client.TaskOffer is TaskOffer


@pytest.mark.parametrize(
    ("task_id", "valid"),
    [("t-1_A", True), ("x" * 64, True), ("", False), ("x" * 65, False), ("a/b", False)],
)
def test_one_task_id_rule_for_requests_and_bundle_folders(task_id: str, valid: bool) -> None:
    by_request = ops.TaskRef.model_validate
    if valid:
        assert by_request({"task_id": task_id}).task_id == task_id
        assert bundle_store.validate_task_id(task_id) == task_id
    else:
        with pytest.raises(ValueError):
            by_request({"task_id": task_id})
        with pytest.raises(AgataError):
            bundle_store.validate_task_id(task_id)


async def test_the_web_ui_keeps_no_copy_of_the_protocol(tmp_path: Path) -> None:
    """The console gets the task id pattern and the stream's kinds from the gateway."""
    async with running_cloud(tmp_path) as cloud:
        response = await cloud.http.get(PATH)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    pattern = re.search(r"TASK_ID_PATTERN = (\"[^\n]*\");", response.text)
    assert pattern is not None and pattern.group(1) == f'"{TASK_ID_PATTERN}"'
    for kind in NOTIFICATION_KINDS:
        assert (f'"{kind}"' in response.text) is (kind != "stop_task")
    scripts = {p: p.read_text() for p in STATIC_ROOT.rglob("*.js")}
    copies = [p.name for p, text in scripts.items() if "A-Za-z0-9_-]{1,64}" in text]
    assert copies == []
    assert any('from "../protocol.js"' in text for text in scripts.values())
