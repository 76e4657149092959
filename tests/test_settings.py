from pathlib import Path

import pytest

from agata.errors import AgataError
from agata.settings import load_settings

ORIGINAL_INI = """
[client.broker]
host=localhost
port=8000

[server.broker]
host=localhost
port=9000

[server.gateway]
port=9001

[events]
register_events=ture

[client.params]
request_interval=10
"""


def test_defaults_are_embedded() -> None:
    settings = load_settings(environ={})

    assert settings.bus_url == "memory://"
    assert settings.database_url.startswith("sqlite:///")


def test_original_config_ini_is_mapped(tmp_path: Path) -> None:
    config = tmp_path / "config.ini"
    config.write_text(ORIGINAL_INI)

    settings = load_settings(config, environ={})

    assert settings.bus_url == "amqp://guest:guest@localhost:9000/"
    assert settings.edge_bus_url == "amqp://guest:guest@localhost:8000/"
    assert settings.gateway_port == 9001
    assert settings.request_interval == 10
    assert settings.register_events is True


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    config = tmp_path / "agata.toml"
    config.write_text('gateway_port = 1\nrpc_timeout = 3\n[edge]\npolicy = "all"\n')
    environ = {"AGATA_GATEWAY_PORT": "2", "AGATA_RPC_TIMEOUT": "4"}

    settings = load_settings(config, {"gateway_port": 3}, environ)

    assert settings.gateway_port == 3
    assert settings.rpc_timeout == 4
    assert settings.policy == "all"


def test_invalid_value_names_key_and_source() -> None:
    with pytest.raises(AgataError) as caught:
        load_settings(environ={"AGATA_GATEWAY_PORT": "eighty"})

    assert "gateway_port" in caught.value.message
    assert "AGATA_GATEWAY_PORT" in caught.value.message


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "agata.toml"
    config.write_text("gatway_port = 1\n")

    with pytest.raises(AgataError) as caught:
        load_settings(config, environ={})

    assert "gatway_port" in caught.value.message


def test_bad_bus_scheme_is_refused() -> None:
    with pytest.raises(AgataError) as caught:
        load_settings(flags={"bus_url": "redis://x"}, environ={})

    assert "bus_url" in caught.value.message


def test_broken_toml_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "agata.toml"
    config.write_text("gateway_port = = 1\n")

    with pytest.raises(AgataError) as caught:
        load_settings(config, environ={})

    assert "invalid TOML" in caught.value.message
