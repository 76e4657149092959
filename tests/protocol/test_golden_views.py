"""The records and offers the cloud sends are the same JSON, field for field and in the
same order, as before their shapes moved into agata.protocol (the wire is binding:
DESIGN.md). ``golden_views.json`` was written by the dict-building views of the commit
before that move, from the records below. Fields added since (the runs of issue 11) are
named in :data:`ADDED`: a record may carry them beside the golden fields, never instead of
one or between two in another order."""

from __future__ import annotations

import json
from pathlib import Path

from agata.cloud.services import views
from agata.protocol.offers import TaskOffer
from agata.store.store import (
    BundleFile,
    Device,
    DeviceTaskState,
    DeviceTaskStatus,
    Task,
    TaskKind,
    TaskState,
)

GOLDEN = json.loads((Path(__file__).parent / "golden_views.json").read_text())
SHA = "ab" * 32
TASK = Task(
    task_id="t-1",
    host="10.0.0.5",
    port=8080,
    username="fl",
    password_hash="",
    selection_criteria='data_qnt > 50 and "camera" in sensors',
    server_arguments=("--rounds", "3"),
    client_arguments=("--index", "{user_id}", "a b"),
    tags=("vision", "lab"),
    running=True,
    state=TaskState.RUNNING,
    state_reason="",
    server_pid=4242,
    created_at="2026-01-01T10:00:00Z",
    updated_at="2026-01-02T11:00:00Z",
    files=(BundleFile("client.py", 120, SHA), BundleFile("server.py", 2048, SHA)),
    version=3,
    limits={"memory_mb": 512, "cpu_cores": 1.5},
    kind=TaskKind.SCRIPT,
)
DEVICE = Device(
    user_id="pi-1",
    data_qnt=100.0,
    avg_acc_contrib=None,
    avg_disconnection_per_round=0.25,
    sensors=frozenset({"camera", "gps"}),
    extra={"location": "lab", "n": 3, "ok": True},
    last_seen="",
    created_at="2026-01-01T09:00:00Z",
)
STATE = DeviceTaskState("pi-1", "t-1", DeviceTaskStatus.RUNNING, "", "2026-01-02T12:00:00Z")


#: Fields a record gained after the golden file was written, and why.
ADDED: dict[str, tuple[str, ...]] = {
    "task": ("run", "run_state", "min_devices", "start_deadline_s"),  # runs (issue 11)
    "offer": ("run",),
    "legacy_offer": ("run",),
    "device": (),
    "device_task": (),
}


def ordered(value: object) -> str:
    """The JSON text, keys in the order they are sent."""
    return json.dumps(value)


def golden_part(value: dict[str, object], name: str) -> str:
    """``value`` without the fields added since the golden file, as sent (its order); the
    added fields must all be there."""
    added = ADDED[name]
    assert set(added) <= set(value), f"{name}: missing {set(added) - set(value)}"
    return ordered({k: v for k, v in value.items() if k not in added})


def test_the_task_record_is_unchanged() -> None:
    view = views.task_view(TASK, last_round=2, last_acc=0.75, devices_running=["pi-1"])

    assert golden_part(view, "task") == ordered(GOLDEN["task"])


def test_the_offers_are_unchanged() -> None:
    offer = views.offer_view(TASK)
    legacy = views.legacy_offer_view(TASK, views.device_attributes(DEVICE))

    assert golden_part(offer, "offer") == ordered(GOLDEN["offer"])
    assert golden_part(legacy, "legacy_offer") == ordered(GOLDEN["legacy_offer"])
    assert isinstance(offer["version"], int)  # a number on the wire, text on the agent
    assert "username" not in offer and "password" not in offer


def test_the_device_records_are_unchanged() -> None:
    device, state = views.device_view(DEVICE, [STATE]), views.device_task_view(STATE)
    assert golden_part(device, "device") == ordered(GOLDEN["device"])
    assert golden_part(state, "device_task") == ordered(GOLDEN["device_task"])


def test_the_agent_reads_back_what_the_cloud_sends() -> None:
    offer = TaskOffer.model_validate(views.offer_view(TASK))

    assert offer.task_id == "t-1"
    assert offer.version == "3"  # a folder name on the device
    assert offer.argv == ["--index", "{user_id}", "a b"]
    assert offer.files == TASK.files
    assert golden_part(offer.to_json(), "offer") == ordered(GOLDEN["offer"])
