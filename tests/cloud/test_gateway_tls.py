"""The gateway over HTTPS (``ssl_certfile``/``ssl_keyfile``) and the agent's client
trusting a private CA (``ca_file``): a real cloud on a loopback port with certificates
made for the test (``tests/tls_certs.py``), called with httpx and the agent's
``CloudClient``."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloud_harness import cloud_settings
from tls_certs import Certificates, make_certificates

from agata.cloud.cloud_node import CloudNode
from agata.edge.cloud_client import CloudClient
from agata.edge.credential import enroll_device
from agata.errors import AgataError, ErrorCode
from agata.protocol import operations as ops


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls-other"))


async def start_node(tmp_path: Path, **flags: Any) -> CloudNode:
    node = CloudNode(cloud_settings(tmp_path, **flags))  # type: ignore[arg-type]
    await node.start()
    return node


@pytest.fixture
async def tls_node(tmp_path: Path, certs: Certificates) -> AsyncIterator[tuple[CloudNode, str]]:
    node = await start_node(tmp_path, ssl_certfile=certs.cert, ssl_keyfile=certs.key)
    token = node.ensure_operator_token()
    assert token
    try:
        yield node, token
    finally:
        await node.stop()


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


async def test_the_gateway_serves_https_verified_against_its_ca(
    tls_node: tuple[CloudNode, str], certs: Certificates
) -> None:
    node, token = tls_node
    auth = {"Authorization": f"Bearer {token}"}

    async with httpx.AsyncClient(base_url=node.url, verify=trusting(certs.ca)) as http:
        health = await http.get("/healthz")
        tasks = await http.post(f"/{ops.LIST_TASKS}", json={}, headers=auth)
        version = http.build_request("GET", "/").url.scheme

    assert node.url.startswith("https://127.0.0.1:")
    assert version == "https"
    assert health.status_code == 200
    assert tasks.status_code == 200, tasks.text
    assert tasks.json() == []


async def test_plain_http_and_untrusted_clients_get_nothing(
    tls_node: tuple[CloudNode, str], other_ca: Certificates
) -> None:
    node, _token = tls_node
    plain = node.url.replace("https://", "http://")

    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(f"{plain}/healthz")
    async with httpx.AsyncClient(timeout=5) as http:  # httpx's default CAs (certifi)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http.get(f"{node.url}/healthz")
    async with httpx.AsyncClient(timeout=5, verify=trusting(other_ca.ca)) as http:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http.get(f"{node.url}/healthz")


async def test_the_agent_client_trusts_the_ca_file(
    tls_node: tuple[CloudNode, str], certs: Certificates, tmp_path: Path
) -> None:
    node, token = tls_node
    async with CloudClient(node.url, credential=token, ca_file=certs.ca) as operator:
        issued = await operator.call(ops.CREATE_ENROLLMENT_TOKEN, {})

    credential = await enroll_device(
        node.url, "pi-1", issued["enrollment_token"], tmp_path / "edge", ca_file=certs.ca
    )
    async with CloudClient(node.url, credential=credential, ca_file=certs.ca) as device:
        await device.call(ops.UPDATE_USER_INFO, {"user_id": "pi-1", "data_qnt": 10})
        offers = await device.requesting_task("pi-1")
        async with device.stream("/api/devices/pi-1/stream", read_timeout=5) as stream:
            first = await anext(stream.aiter_lines())

    assert offers == []
    assert first == ": connected"


async def test_the_agent_client_without_the_ca_file_refuses_the_cloud(
    tls_node: tuple[CloudNode, str], other_ca: Certificates
) -> None:
    node, token = tls_node

    for ca_file in (None, other_ca.ca):
        async with CloudClient(node.url, credential=token, attempts=1, ca_file=ca_file) as client:
            with pytest.raises(AgataError) as refused:
                await client.call(ops.LIST_TASKS, {})
        assert refused.value.code is ErrorCode.UNAVAILABLE
        assert "CERTIFICATE_VERIFY_FAILED" in refused.value.message


async def test_certificate_and_key_in_one_file(tmp_path: Path, certs: Certificates) -> None:
    node = await start_node(tmp_path, ssl_certfile=certs.combined)
    try:
        async with httpx.AsyncClient(verify=trusting(certs.ca)) as http:
            health = await http.get(f"{node.url}/healthz")
    finally:
        await node.stop()

    assert health.status_code == 200


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (("key", "key"), "ssl_certfile {key}: not a PEM certificate"),
        (("cert", "ca"), "ssl_keyfile {ca}: no PEM private key in it"),
        (("cert", None), "ssl_certfile {cert}: no PEM private key in it; give ssl_keyfile"),
        (("cert", "other_key"), "ssl_keyfile {other_key}: not the private key of the certif"),
    ],
)
async def test_unusable_files_stop_the_node_naming_the_setting(
    tmp_path: Path,
    certs: Certificates,
    other_ca: Certificates,
    files: tuple[str, str | None],
    message: str,
) -> None:
    paths = {"key": certs.key, "cert": certs.cert, "ca": certs.ca, "other_key": other_ca.key}
    certfile, keyfile = (paths[f] if f else None for f in files)
    node = CloudNode(
        cloud_settings(tmp_path, ssl_certfile=certfile, ssl_keyfile=keyfile)  # type: ignore[arg-type]
    )

    with pytest.raises(AgataError) as refused:
        await node.start()

    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    assert refused.value.message.startswith(message.format_map(paths))
    assert node.port is None  # nothing listens
    assert not node._running  # and no service was started
