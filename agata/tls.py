"""TLS from settings: the cloud's certificate files, the gateway's context built from
them, and the context of an agent that trusts a CA.

:func:`certificate_files` resolves the cloud's ``ssl_certfile``, ``ssl_keyfile`` and
``ssl_ca_file`` once for every user of them: the gateway serves with the certificate and
its key (:func:`server_context`), each flower-app SuperLink is given all three paths
(:mod:`agata.flower.superlink`; Flower reads them itself). The contexts load their files
at once and turn every failure into an :class:`AgataError` that names the setting
(``ssl_certfile``, ``ssl_keyfile``, ``ca_file``) and says why, instead of an
``ssl.SSLError`` from deep inside uvicorn or httpx on the first connection.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from agata.errors import AgataError, ErrorCode


@dataclass(frozen=True)
class CertificateFiles:
    """The cloud's certificate (a PEM chain), its private key, and the CA that issued it."""

    certfile: Path
    keyfile: Path
    ca_file: Path


def certificate_files(
    certfile: Path | None, keyfile: Path | None, ca_file: Path | None
) -> CertificateFiles | None:
    """The settings' certificate files; None without a certificate. A missing key is
    read from the certificate file (as :func:`server_context` reads it), a missing CA is
    the certificate itself (self-signed)."""
    if certfile is None:
        return None
    return CertificateFiles(certfile, keyfile or certfile, ca_file or certfile)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def server_context(certfile: Path, keyfile: Path | None = None) -> ssl.SSLContext:
    """The gateway's TLS context (TLS 1.2 or later) from a PEM certificate chain and its
    unencrypted PEM private key; without ``keyfile`` the key is read from ``certfile``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:  # the certificate alone first, so that its own problems are named as such
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=certfile)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT,
            f"ssl_certfile {certfile}: not a PEM certificate ({_reason(exc)})",
        ) from None
    where = f"ssl_keyfile {keyfile}" if keyfile else f"ssl_certfile {certfile}"

    def encrypted() -> NoReturn:
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT,
            f"{where}: the private key is encrypted; give an unencrypted one "
            "(readable by the cloud's user only)",
        )

    try:
        context.load_cert_chain(certfile, keyfile, password=encrypted)
    except (ssl.SSLError, OSError, ValueError) as exc:
        if isinstance(exc, ssl.SSLError) and "PEM lib" in str(exc):
            problem = "no PEM private key in it" + ("" if keyfile else "; give ssl_keyfile")
        else:
            problem = f"not the private key of the certificate in ssl_certfile ({_reason(exc)})"
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"{where}: {problem}") from None
    return context


def client_context(ca_file: Path) -> ssl.SSLContext:
    """A client context that trusts the certificates of ``ca_file`` (PEM) and no others,
    checking host names as usual."""
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise AgataError(
            ErrorCode.INVALID_ARGUMENT,
            f"ca_file {ca_file}: not a PEM certificate file ({_reason(exc)})",
        ) from None
