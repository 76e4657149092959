"""TLS from files (``agata.tls``): real certificates made for the test, a real
handshake over a socket pair, every unusable file an error naming its setting, and the
certificate files resolved once for the gateway and the flower-app SuperLinks."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from tls_certs import Certificates, encrypt_key, make_certificates

from agata.errors import AgataError, ErrorCode
from agata.flower.superlink import RunFolder, superlink_arguments
from agata.tls import CertificateFiles, certificate_files, client_context, server_context


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> bytes:
    """Connect ``client`` to ``server`` over a socket pair; what the server sent."""
    left, right = socket.socketpair()
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            with server.wrap_socket(left, server_side=True) as side:
                side.sendall(b"hello")
        except (ssl.SSLError, OSError) as exc:
            failures.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(right, server_hostname=hostname) as side:
            return side.recv(5)
    finally:
        thread.join(10)
        left.close()


@pytest.fixture(params=["cryptography", "openssl"])
def certs(request: pytest.FixtureRequest, tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "tls", use_openssl=request.param == "openssl")


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_a_client_trusting_the_ca_completes_a_handshake(certs: Certificates, hostname: str) -> None:
    received = handshake(server_context(certs.cert, certs.key), client_context(certs.ca), hostname)

    assert received == b"hello"


def test_a_client_trusting_another_ca_does_not(certs: Certificates, tmp_path: Path) -> None:
    other = make_certificates(tmp_path / "other")

    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server_context(certs.cert, certs.key), client_context(other.ca), "localhost")


def test_the_server_speaks_tls_1_2_at_least(certs: Certificates) -> None:
    context = server_context(certs.combined)

    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_an_encrypted_key_is_refused_without_asking_for_a_password(
    certs: Certificates, tmp_path: Path
) -> None:
    locked = encrypt_key(certs.key, tmp_path / "locked.pem")

    with pytest.raises(AgataError) as refused:
        server_context(certs.cert, locked)

    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    assert refused.value.message == f"ssl_keyfile {locked}: the private key is encrypted; " + (
        "give an unencrypted one (readable by the cloud's user only)"
    )


def test_a_ca_file_without_a_certificate_is_refused(certs: Certificates) -> None:
    with pytest.raises(AgataError) as refused:
        client_context(certs.key)

    assert refused.value.message.startswith(f"ca_file {certs.key}: not a PEM certificate file")


def test_the_certificate_files_serve_the_gateway_and_the_superlinks(
    certs: Certificates, tmp_path: Path
) -> None:
    files = certificate_files(certs.cert, certs.key, certs.ca)
    assert files == CertificateFiles(certs.cert, certs.key, certs.ca)

    received = handshake(
        server_context(files.certfile, files.keyfile), client_context(files.ca_file), "localhost"
    )
    arguments = superlink_arguments(RunFolder(tmp_path / "run"), "0.0.0.0", 9092, files)

    assert received == b"hello"
    for flag, path in [
        ("--ssl-certfile", certs.cert),
        ("--ssl-keyfile", certs.key),
        ("--ssl-ca-certfile", certs.ca),
    ]:
        assert arguments[arguments.index(flag) + 1] == str(path)


def test_a_missing_key_is_in_the_certificate_file_and_a_missing_ca_is_the_certificate(
    certs: Certificates,
) -> None:
    files = certificate_files(certs.combined, None, None)

    assert files == CertificateFiles(certs.combined, certs.combined, certs.combined)
    assert certificate_files(None, None, None) is None
    server_context(files.certfile, files.keyfile)  # the key is read from the chain's file
