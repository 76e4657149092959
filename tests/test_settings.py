from pathlib import Path
from typing import Any

import pytest

from agata.bus.bus_factory import BUS_ALIASES
from agata.errors import AgataError
from agata.settings import CloudSettings, EdgeSettings, Settings, SharedSettings, load_settings
from agata.store.store_factory import SCHEMES
from agata.store.store_schemes import DB_SCHEMES

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


def test_tls_and_rate_limit_from_file_environment_and_flags(tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / name for name in ("cert.pem", "key.pem", "ca.pem"))
    for path in (cert, key, ca):
        path.write_text("-----BEGIN ...\n")  # only their existence is checked here
    config = tmp_path / "agata.toml"
    config.write_text(
        f'[cloud]\nssl_certfile = "{cert}"\nrate_limit = 5\n[edge]\nca_file = "{ca}"\n'
    )
    environ = {"AGATA_SSL_KEYFILE": str(key), "AGATA_RATE_BURST": "20"}

    settings = load_settings(config, {"rate_limit": 7.5}, environ)
    defaults = load_settings(environ={})

    assert (settings.ssl_certfile, settings.ssl_keyfile, settings.ca_file) == (cert, key, ca)
    assert (settings.rate_limit, settings.rate_burst) == (7.5, 20)
    assert (defaults.ssl_certfile, defaults.ssl_keyfile, defaults.ca_file) == (None, None, None)
    assert (defaults.rate_limit, defaults.rate_burst) == (0, 0)


def test_an_empty_environment_value_unsets_a_file(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    config = tmp_path / "agata.toml"
    config.write_text(f'ssl_certfile = "{cert}"\n')

    settings = load_settings(config, environ={"AGATA_SSL_CERTFILE": ""})

    assert settings.ssl_certfile is None


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"flags": {"ssl_certfile": "/nonexistent/cert.pem"}}, "ssl_certfile (from command line)"),
        (
            {"environ": {"AGATA_SSL_KEYFILE": "/nonexistent/k"}},
            "ssl_keyfile (from AGATA_SSL_KEYFILE)",
        ),
        ({"flags": {"ca_file": "/"}}, "ca_file (from command line): Value error, / is not a file"),
        ({"flags": {"rate_limit": -1}}, "rate_limit (from command line)"),
        ({"flags": {"rate_burst": 0.5}}, "rate_burst (from command line): Value error, must be 0"),
    ],
)
def test_bad_tls_and_rate_settings_name_key_and_source(
    source: dict[str, Any], message: str
) -> None:
    with pytest.raises(AgataError) as caught:
        load_settings(flags=source.get("flags"), environ=source.get("environ", {}))

    assert caught.value.message.startswith(f"invalid configuration: {message}")


def test_a_key_without_its_certificate_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("x")

    with pytest.raises(AgataError) as caught:
        load_settings(flags={"ssl_keyfile": key}, environ={})

    assert caught.value.message == (
        "invalid configuration: Value error, ssl_keyfile is given without ssl_certfile "
        "(its certificate)"
    )


def test_admission_settings_come_from_flags_and_environment() -> None:
    environ = {"AGATA_MAX_IN_FLIGHT": "8", "AGATA_ADMISSION_WAIT": "0.5"}
    settings = load_settings(flags={"admission_wait": 2.0}, environ=environ)
    assert settings.max_in_flight == 8 and settings.admission_wait == 2.0
    with pytest.raises(AgataError, match="max_in_flight"):
        load_settings(environ={"AGATA_MAX_IN_FLIGHT": "0"})


# -- settings by side ------------------------------------------------------------------


def test_each_side_has_its_own_settings_and_shares_only_the_shared() -> None:
    cloud, edge = set(CloudSettings.model_fields), set(EdgeSettings.model_fields)

    assert cloud & edge == set(SharedSettings.model_fields)
    assert {"db_url", "gateway_port", "reconcile"} <= cloud - edge
    assert {"cloud_url", "policy", "ca_file"} <= edge - cloud
    assert set(Settings.model_fields) == cloud | edge


def test_one_file_serves_both_sides(tmp_path: Path) -> None:
    config = tmp_path / "agata.toml"
    config.write_text(
        'request_interval = 5\n[cloud]\ngateway_port = 9100\n[edge]\npolicy = "all"\n'
    )

    cloud = load_settings(config, environ={}, side=CloudSettings)
    edge = load_settings(config, environ={}, side=EdgeSettings)

    assert type(cloud) is CloudSettings and cloud.gateway_port == 9100
    assert type(edge) is EdgeSettings and edge.policy == "all"
    assert cloud.request_interval == edge.request_interval == 5
    assert not hasattr(edge, "db_url") and not hasattr(cloud, "cloud_url")


def test_a_flag_of_the_other_side_or_of_no_side_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AgataError, match=r"unknown setting 'policy' \(from command line"):
        load_settings(flags={"policy": "all"}, environ={}, side=CloudSettings)
    config = tmp_path / "agata.toml"
    config.write_text("polcy = 'all'\n")
    with pytest.raises(AgataError, match="unknown setting 'polcy'"):
        load_settings(config, environ={}, side=EdgeSettings)


def test_every_validation_rule_holds_on_each_side(tmp_path: Path) -> None:
    """Rules of one side survive the combined Settings (same-named validators of two
    sides would hide each other)."""
    missing = tmp_path / "absent.pem"
    for side, key in ((EdgeSettings, "ca_file"), (CloudSettings, "ssl_certfile")):
        for model in (side, Settings):
            with pytest.raises(AgataError, match=f"{key} .* is not a file"):
                load_settings(flags={key: missing}, environ={}, side=model)


# -- URL schemes: one table each, shared with the factories -----------------------------


@pytest.mark.parametrize("scheme", sorted(DB_SCHEMES))
def test_every_database_scheme_of_the_factory_is_a_valid_setting(scheme: str) -> None:
    settings = load_settings(flags={"db_url": f"{scheme}://u@h/db"}, environ={})

    assert settings.db_url.startswith(f"{scheme}://")
    assert set(SCHEMES) == set(DB_SCHEMES)


def test_postgres_scheme_is_accepted_like_the_factory_does() -> None:
    """The factory has always opened postgres://; the settings refused it."""
    settings = load_settings(flags={"db_url": "postgres://agata@127.0.0.1/db"}, environ={})

    assert settings.database_url == "postgres://agata@127.0.0.1/db"
    with pytest.raises(AgataError, match="must start with one of sqlite://"):
        load_settings(flags={"db_url": "mysql://u@h/db"}, environ={})


@pytest.mark.parametrize("scheme", sorted(BUS_ALIASES))
def test_every_bus_scheme_of_the_factory_is_a_valid_setting(scheme: str) -> None:
    assert load_settings(flags={"bus_url": f"{scheme}://h/"}, environ={}).bus_url
    assert load_settings(flags={"edge_bus_url": f"{scheme}://h/"}, environ={}).edge_bus_url
