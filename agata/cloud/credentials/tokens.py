"""Secrets of the cloud: operator tokens, enrollment tokens, device credentials.

Only SHA-256 hashes of the tokens are stored. The tokens are 256-bit random strings,
so a plain (unsalted) hash is enough to make a stolen database useless for logging in,
and it lets the gateway find a token by its hash in one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets

OPERATOR_PREFIX = "agata_op_"
DEVICE_PREFIX = "agata_dev_"
ENROLLMENT_PREFIX = "agata_enr_"


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
