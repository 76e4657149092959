"""Device identity and attributes from files and flags."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from agata.edge.device_info import DeviceInfo, DeviceSource, device_info
from agata.errors import AgataError

TOML = """
user_id = "pi-01"
data_qnt = 120
avg_acc_contrib = 0.8
sensors = ["camera", "gps"]
room = "lab"

[extra]
floor = 2
"""


def test_toml_file_with_extra_attributes(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_text(TOML)

    info = DeviceSource(path).current()

    assert info == DeviceInfo(
        user_id="pi-01",
        data_qnt=120,
        avg_acc_contrib=0.8,
        sensors=("camera", "gps"),
        extra={"room": "lab", "floor": 2},
    )
    assert info.to_request() == {
        "user_id": "pi-01",
        "data_qnt": 120,
        "avg_acc_contrib": 0.8,
        "sensors": ["camera", "gps"],
        "extra": {"room": "lab", "floor": 2},
    }


def test_json_file_and_flags_override_it(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    path.write_text(json.dumps({"user_id": "a", "data_qnt": 1, "extra": {"x": 1}}))

    info = DeviceSource(path, {"data_qnt": 5, "sensors": ["mic"], "extra": {"y": "z"}}).current()

    assert (info.user_id, info.data_qnt, info.sensors) == ("a", 5, ("mic",))
    assert info.extra == {"x": 1, "y": "z"}


def test_flags_alone() -> None:
    assert DeviceSource(None, {"user_id": "dev-9"}).current().user_id == "dev-9"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.toml", "user_id = ", "invalid TOML"),
        ("d.json", "{not json", "invalid JSON"),
        ("d.json", "[1, 2]", "one JSON object"),
        ("d.toml", "data_qnt = 3", "user_id is missing"),
        ("d.toml", 'user_id = "bad id!"', "user_id"),
        ("d.toml", 'user_id = "a"\ndata_qnt = "many"', "data_qnt"),
        ("d.toml", 'user_id = "a"\nsensors = "camera"', "sensors"),
        ("d.toml", 'user_id = "a"\nthings = [1, 2]', "unknown attribute 'things'"),
        ("d.toml", 'user_id = "a"\ndata_qnt = nan', "finite"),
    ],
)
def test_bad_device_files_say_why(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)

    with pytest.raises(AgataError, match=message) as caught:
        DeviceSource(path).current()

    assert str(path) in caught.value.message or "device file" in caught.value.message


def test_missing_device_file(tmp_path: Path) -> None:
    with pytest.raises(AgataError, match="does not exist"):
        DeviceSource(tmp_path / "nope.toml").current()


def test_changes_are_seen_and_a_broken_file_keeps_the_last_good_attributes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "device.toml"
    path.write_text('user_id = "a"\nsensors = ["camera"]\n')
    source = DeviceSource(path)
    first = source.current()

    path.write_text('user_id = "a"\nsensors = ["camera", "gps"]\n')
    os.utime(path, ns=(1, 1))  # a different stamp even within one clock tick
    second = source.current()
    path.write_text("user_id = [broken")
    with caplog.at_level(logging.WARNING):
        third = source.current()
        fourth = source.current()

    assert first.sensors == ("camera",)
    assert second.sensors == ("camera", "gps")
    assert third == fourth == second
    assert len([r for r in caplog.records if "last good" in r.getMessage()]) == 1


def test_device_info_from_values_refuses_non_table_extra() -> None:
    with pytest.raises(AgataError, match="extra must be a table"):
        device_info({"user_id": "a", "extra": 3})
