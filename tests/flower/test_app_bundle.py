"""What a flower-app bundle must hold: app components, FAB hash, AGATA's run options."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from agata.errors import AgataError, ErrorCode
from agata.flower.app_bundle import RunOptions, app_folder, check_app, read_app
from agata.flower.app_run import split_arguments

EXAMPLE = Path(__file__).parents[2] / "agata" / "examples" / "tasks" / "digits-app"

PYPROJECT = """
[project]
name = "demo-app"
version = "1.0.0"

[tool.flwr.app]
publisher = "me"

[tool.flwr.app.components]
serverapp = "server_app:app"
clientapp = "client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3

[tool.agata]
min-nodes = 2
join-seconds = 30
"""

MODULES = {"server_app.py": b"app = None\n", "client_app.py": b"app = None\n"}


def files(pyproject: str | None = PYPROJECT, **extra: bytes) -> dict[str, bytes]:
    found = {**MODULES, **extra}
    if pyproject is not None:
        found["pyproject.toml"] = pyproject.encode()
    return found


def check(found: dict[str, bytes]) -> object:
    return check_app(found, found.__getitem__)


def refused(found: dict[str, bytes]) -> str:
    with pytest.raises(AgataError) as caught:
        check(found)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    return caught.value.message


def fab(found: dict[str, bytes]) -> tuple[str, bytes]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in found.items():
            archive.writestr(name, data)
    data = buffer.getvalue()
    return f"me.demo-app.1-0-0.{hashlib.sha256(data).hexdigest()[:8]}.fab", data


def test_the_example_app_is_a_valid_bundle() -> None:
    app = read_app(EXAMPLE)

    assert (app.serverapp, app.clientapp) == ("server_app:app", "client_app:app")
    assert app.config["num-server-rounds"] == 3


def test_a_project_with_both_components_gives_its_app_and_options() -> None:
    app = check(files())

    assert app.name == "demo-app"  # type: ignore[attr-defined]
    assert app.options == RunOptions(min_nodes=2, join_seconds=30.0)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("found", "named"),
    [
        (files(None), "needs pyproject.toml"),
        (files("[project]\nname = 'x'\n"), "no [tool.flwr.app]"),
        (files(PYPROJECT.replace('clientapp = "client_app:app"', "")), "no clientapp"),
        (
            files(
                PYPROJECT.replace('serverapp = "server_app:app"', "").replace(
                    'clientapp = "client_app:app"', ""
                )
            ),
            "no serverapp and no clientapp",
        ),
        (files(PYPROJECT.replace("server_app:app", "elsewhere:app")), "no elsewhere.py"),
        (files("[tool.flwr.app\n"), "not valid TOML"),
        (files(PYPROJECT.replace("min-nodes = 2", "min-nodes = -1")), "min-nodes"),
        (files(PYPROJECT.replace("min-nodes = 2", "min-node = 2")), "unknown key 'min-node'"),
    ],
)
def test_a_bundle_without_what_an_app_needs_is_refused_naming_it(
    found: dict[str, bytes], named: str
) -> None:
    assert named in refused(found)


def test_a_fab_whose_hash_matches_its_name_is_taken() -> None:
    name, data = fab(files())

    app = check({name: data})

    assert app.serverapp == "server_app:app"  # type: ignore[attr-defined]


def test_a_fab_changed_after_its_build_is_refused() -> None:
    name, data = fab(files())
    changed = data[:-1] + bytes([data[-1] ^ 1])

    assert "changed or damaged" in refused({name: changed})


def test_a_fab_beside_other_files_or_without_a_hash_in_its_name_is_refused() -> None:
    name, data = fab(files())

    assert "alone" in refused({name: data, "extra.py": b""})
    assert "<hash>" in refused({"app.fab": data})


def test_a_fab_is_unpacked_into_the_run_folder_for_flwr_run(tmp_path: Path) -> None:
    name, data = fab(files())
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / name).write_bytes(data)

    folder, app = app_folder(bundle, tmp_path / "run")

    assert folder == tmp_path / "run" / "app"
    assert (folder / "pyproject.toml").read_bytes() == PYPROJECT.encode()
    assert app.name == "demo-app"


def test_server_arguments_are_run_config_and_agata_options() -> None:
    options, config = split_arguments(
        ["num-server-rounds=5", "agata.min-nodes=3", "lr=0.1"], RunOptions(join_seconds=9)
    )

    assert config == {"num-server-rounds": "5", "lr": "0.1"}
    assert (options.min_nodes, options.join_seconds) == (3, 9.0)


@pytest.mark.parametrize("item", ["rounds", "=3", "agata.min-nodes=two", "agata.bogus=1"])
def test_a_bad_server_argument_is_refused_naming_it(item: str) -> None:
    with pytest.raises(AgataError) as caught:
        split_arguments([item], RunOptions())

    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
