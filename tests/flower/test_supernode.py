"""What a device checks and builds before its SuperNode starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from agata.errors import AgataError, ErrorCode
from agata.flower.node_keys import check_public_key, make_node_key
from agata.flower.supernode import check_flower, node_config, supernode_arguments


def test_flwr_missing_or_of_another_version_says_which() -> None:
    with pytest.raises(AgataError) as missing:
        check_flower("1.42.0", None)
    with pytest.raises(AgataError) as other:
        check_flower("1.42.0", "1.11.1")

    assert missing.value.code is ErrorCode.NOT_FOUND
    assert "flwr is not installed on this device" in missing.value.message
    assert "flwr 1.11.1 is installed" in other.value.message
    assert "flwr 1.42.0" in other.value.message
    assert check_flower("1.42.0", "1.42.3") == "1.42.3"


def test_node_config_quotes_text_keeps_toml_values_and_adds_the_device() -> None:
    config = node_config(["partition-id=1", "num-partitions=2", "site=lab 3"], "dev-1")

    assert config == 'partition-id=1 num-partitions=2 site="lab 3" device-id="dev-1"'


@pytest.mark.parametrize("item", ["partition-id", "bad key=1", "=2"])
def test_a_client_argument_that_is_no_node_config_entry_is_refused(item: str) -> None:
    with pytest.raises(AgataError) as caught:
        node_config([item], "dev-1")

    assert caught.value.code is ErrorCode.INVALID_ARGUMENT


def test_insecure_only_without_tls_and_the_key_only_with_auth(tmp_path: Path) -> None:
    private, public = make_node_key(tmp_path)

    plain = supernode_arguments("127.0.0.1:1", "a=1", port=2, tls=False)
    secure = supernode_arguments(
        "h:1", "a=1", port=2, tls=True, root_certificates=tmp_path / "ca.pem", private_key=private
    )

    assert "--insecure" in plain and "--auth-supernode-private-key" not in plain
    assert "--insecure" not in secure
    assert secure[secure.index("--auth-supernode-private-key") + 1] == str(private)
    assert check_public_key(public) == public.strip()
    assert oct(private.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("text", ["", "ssh-rsa AAAA", "not a key at all"])
def test_a_public_key_flower_would_refuse_is_a_400(text: str) -> None:
    with pytest.raises(AgataError) as caught:
        check_public_key(text)

    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
