"""``agata cloud run`` and ``agata device enroll`` as processes: the TLS and rate-limit
flags reach the gateway, the ``--ca-file`` flag reaches the agent's client, and an
unusable file is one line on stderr naming the setting (exit code 2, no traceback)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tls_certs import Certificates, make_certificates

from agata.edge.credential import credential_path

AGATA = [sys.executable, "-m", "agata"]
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@dataclass
class Running:
    url: str
    token: str


@asynccontextmanager
async def cloud_run(tmp_path: Path, *flags: str) -> AsyncIterator[Running]:
    """``agata cloud run --port 0 FLAGS``; the URL and token it prints; SIGTERM at the end."""
    data_dir = tmp_path / "cloud"
    with (tmp_path / "cloud.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *AGATA, "cloud", "run", "--data-dir", str(data_dir), "--port", "0", *flags,
            stdout=asyncio.subprocess.PIPE, stderr=log, env=ENV,
        )  # fmt: skip
    assert process.stdout is not None
    try:
        printed: list[str] = []
        async with asyncio.timeout(30):
            while not printed or not printed[-1].startswith("  agata_op_"):  # the token
                line = await process.stdout.readline()
                assert line, f"the cloud exited: {(tmp_path / 'cloud.log').read_text()}"
                printed.append(line.decode())
        found = re.search(r"^AGATA cloud on (\S+) ", printed[0])
        assert found, printed
        yield Running(found.group(1), printed[-1].strip())
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)


async def agata(*args: str) -> tuple[int, str]:
    """Run ``agata ARGS``; its exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        *AGATA, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=ENV
    )
    _out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_cloud_run_with_a_certificate_serves_https(
    tmp_path: Path, certs: Certificates
) -> None:
    flags = ("--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.key))

    async with cloud_run(tmp_path, *flags) as cloud:
        verify = ssl.create_default_context(cafile=str(certs.ca))
        async with httpx.AsyncClient(verify=verify) as http:
            health = await http.get(f"{cloud.url}/healthz")
            issued = await http.post(
                f"{cloud.url}/rpc_exec_create_enrollment_token",
                json={"uses": 2},
                headers={"Authorization": f"Bearer {cloud.token}"},
            )
        enrollment = issued.json()["enrollment_token"]
        device = ("device", "enroll", "--cloud-url", cloud.url, "--user-id", "pi-1")
        device += ("--enrollment-token", enrollment, "--data-dir", str(tmp_path / "edge"))
        untrusted = await agata(*device)
        trusted = await agata(*device, "--ca-file", str(certs.ca))

    assert cloud.url.startswith("https://127.0.0.1:")
    assert health.status_code == 200
    assert untrusted[0] == 2
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted[1]
    assert "Traceback" not in untrusted[1]
    assert trusted == (0, "")
    assert credential_path(tmp_path / "edge").is_file()


async def test_cloud_run_with_a_rate_limit_answers_429(tmp_path: Path) -> None:
    async with cloud_run(tmp_path, "--rate-limit", "1", "--rate-burst", "3") as cloud:
        async with httpx.AsyncClient(base_url=cloud.url) as http:
            statuses = [(await http.get("/healthz")).status_code for _ in range(4)]
            refused = await http.get("/healthz")

    assert cloud.url.startswith("http://127.0.0.1:")
    assert statuses == [200, 200, 200, 429]
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--ssl-certfile", "{key}", "--ssl-keyfile", "{key}"],
            "error: ssl_certfile {key}: not a PEM certificate",
        ),
        (
            ["--ssl-certfile", "{cert}", "--ssl-keyfile", "{ca}"],
            "error: ssl_keyfile {ca}: no PEM private key in it",
        ),
        (
            ["--ssl-certfile", "/nonexistent/cert.pem"],
            "error: invalid configuration: ssl_certfile (from command line): Value error, "
            "/nonexistent/cert.pem is not a file",
        ),
        (["--rate-limit", "-1"], "error: invalid configuration: rate_limit (from command line)"),
    ],
)
async def test_cloud_run_with_unusable_settings_says_which(
    tmp_path: Path, certs: Certificates, flags: list[str], message: str
) -> None:
    paths = {"key": certs.key, "cert": certs.cert, "ca": certs.ca}
    argv = [flag.format_map(paths) for flag in flags]

    code, err = await agata("cloud", "run", "--data-dir", str(tmp_path), "--port", "0", *argv)

    assert code == 2
    assert err.startswith(message.format_map(paths)), err
    assert "Traceback" not in err
