"""Task download passwords as slow hashes (scrypt, standard library).

A task's password (the HTTP Basic credential of devices of the original system) is kept
as ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (salt and hash in unpadded URL-safe base64), a
self-describing form: the parameters can grow later and old rows still verify. An empty
password is kept empty (there is nothing to hide, and "no password" stays visible).

:func:`verify_password` costs a full scrypt (tens of milliseconds, 16 MiB); callers on a
hot path verify once and cache the outcome (see :mod:`agata.cloud.credentials.download_passwords`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["hash_password", "is_hashed", "verify_password"]

_SCHEME = "scrypt"
_N, _R, _P = 1 << 14, 8, 1
_SALT_BYTES = 16
_HASH_BYTES = 32
#: Refuse stored parameters that would need more memory than this (a doctored row).
_MAX_MEMORY = 64 * 1024 * 1024


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=size, maxmem=_MAX_MEMORY
    )


def hash_password(password: str) -> str:
    """The stored form of ``password``: ``""`` for ``""``, else a salted scrypt hash."""
    if not password:
        return ""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, _N, _R, _P, _HASH_BYTES)
    return f"{_SCHEME}${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def is_hashed(stored: str) -> bool:
    """Whether ``stored`` has the form :func:`hash_password` writes (or is empty)."""
    return not stored or _parse(stored) is not None


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        return None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * n * r * p > _MAX_MEMORY or not digest:
        return None
    return n, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` (a :func:`hash_password` value) was
    made from. An empty ``stored`` matches only the empty password; a value that is not
    a well-formed hash matches nothing. Constant-time in the comparison."""
    if not stored:
        return hmac.compare_digest(password.encode("utf-8"), b"")
    parsed = _parse(stored)
    if parsed is None:
        return False
    n, r, p, salt, digest = parsed
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(digest)), digest)
