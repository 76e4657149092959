"""Certificates made at test time: a private CA and a server certificate it signed.

With the ``cryptography`` package when it is installed (Flower brings it), else with
the ``openssl`` binary. The server certificate is for ``localhost`` and ``127.0.0.1``.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA's certificate (what a client trusts)
    cert: Path  # the server's certificate
    key: Path  # its private key (unencrypted)
    combined: Path  # certificate and key in one file


def make_certificates(folder: Path, *, use_openssl: bool = False) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    paths = Certificates(
        folder / "ca.pem", folder / "server.pem", folder / "server-key.pem", folder / "both.pem"
    )
    try:
        if use_openssl:
            raise ImportError
        import cryptography  # noqa: F401
    except ImportError:
        _with_openssl(folder, paths)
    else:
        _with_cryptography(paths)
    paths.combined.write_bytes(paths.cert.read_bytes() + paths.key.read_bytes())
    return paths


def _with_cryptography(paths: Certificates) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("AGATA test CA"))
        .issuer_name(name("AGATA test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths.ca.write_bytes(ca.public_bytes(pem))
    paths.cert.write_bytes(cert.public_bytes(pem))
    paths.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _with_openssl(folder: Path, paths: Certificates) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    ca_key, csr, ext = folder / "ca-key.pem", folder / "server.csr", folder / "server.ext"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(paths.ca), "-days", "1",
        "-subj", "/CN=AGATA test CA",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", "-new", *ec, "-keyout", str(paths.key), "-out", str(csr), "-subj", "/CN=localhost")
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\n"
    )
    run("x509", "-req", "-in", str(csr), "-CA", str(paths.ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(paths.cert))  # fmt: skip


def encrypt_key(key: Path, out: Path, password: str = "secret") -> Path:
    """``key`` encrypted with ``password`` (PEM), written to ``out``."""
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        subprocess.run(
            ["openssl", "pkey", "-in", str(key), "-out", str(out), "-aes256",
             "-passout", f"pass:{password}"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return out
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    out.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    return out
