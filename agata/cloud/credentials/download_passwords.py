"""Download passwords of devices of the original system (HTTP Basic, ``--legacy-devices``).

The store keeps only a hash of a task's password (:mod:`agata.store.passwords`), so the
offer to a device of the original system cannot carry the operator's password. It
carries a per-device password instead, which that agent sends back as given:

    ``agata-dl:<device id>:<mac>``, mac = HMAC-SHA256(key = the stored hash,
    message = task id NUL device id), unpadded URL-safe base64.

The cloud checks one by recomputing the HMAC (microseconds, no scrypt). The key is the
stored hash, itself secret (never returned by an operation), so changing the task's
password invalidates every derived password at once, and one made for task A is not
valid for task B. It deliberately does NOT bind the bundle version: it grants access to
the task's bundle, not to one version of it; every file is checked by sha256 anyway, and
binding it would 401 a device downloading while the operator replaced the bundle.

The operator's own password still works for Basic downloads: it is verified against the
scrypt hash once in a worker thread, and a verified (task, username, password) is then
remembered for :data:`VERIFIED_SECONDS` (by a keyed digest, never the password itself;
over the stored hash too, so a password change ends it), so repeated downloads do
not pay a scrypt each. At most :data:`SLOW_CHECKS` scrypt verifications run at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time

from agata.store.passwords import verify_password
from agata.store.store import Task

__all__ = ["PREFIX", "SLOW_CHECKS", "VERIFIED_SECONDS", "DownloadPasswords", "device_password"]

PREFIX = "agata-dl:"
#: How long a verified operator password is remembered.
VERIFIED_SECONDS = 300.0
_MAX_REMEMBERED = 4096
#: scrypt verifications run at once (the rest wait their turn).
SLOW_CHECKS = 2


def _mac(password_hash: str, task_id: str, user_id: str) -> str:
    digest = hmac.new(
        password_hash.encode("utf-8"), f"{task_id}\0{user_id}".encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def device_password(task: Task, user_id: str) -> str:
    """The download password the offer to device ``user_id`` carries for ``task``
    (``""`` when the task has no password: that device sends an empty one)."""
    if not task.password_hash:
        return ""
    return f"{PREFIX}{user_id}:{_mac(task.password_hash, task.task_id, user_id)}"


class DownloadPasswords:
    """Checks a Basic download's username/password against a task (one per task manager)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)  # for the remembered digests
        self._verified: dict[bytes, float] = {}
        # scrypt costs 16 MiB and tens of ms: a flood of wrong passwords gets queued
        # here instead of taking every worker thread and that memory each.
        self._slow = asyncio.Semaphore(SLOW_CHECKS)

    async def check(self, task: Task, username: str, password: str) -> bool:
        """Whether ``username``/``password`` may download ``task``'s bundle: a task with
        neither a username nor a password accepts none; the username must be the
        task's; the password is a :func:`device_password` for it or the task's own."""
        if not (task.username or task.password_hash):
            return False
        # Both are checked whatever the first says (no early exit on the username).
        user_ok = hmac.compare_digest(username.encode("utf-8"), task.username.encode("utf-8"))
        password_ok = self._derived_ok(task, password) or await self._task_password_ok(
            task, password
        )
        return user_ok and password_ok

    async def _task_password_ok(self, task: Task, password: str) -> bool:
        remembered = self._digest(task, password)
        now = time.monotonic()
        if self._verified.get(remembered, 0.0) > now:
            return True
        async with self._slow:
            ok = await asyncio.to_thread(verify_password, password, task.password_hash)
        if ok:
            self._remember(remembered, now + VERIFIED_SECONDS)
        return ok

    @staticmethod
    def _derived_ok(task: Task, password: str) -> bool:
        if not task.password_hash or not password.startswith(PREFIX):
            return False
        user_id, sep, mac = password[len(PREFIX) :].rpartition(":")
        if not sep or not user_id:
            return False
        expected = _mac(task.password_hash, task.task_id, user_id)
        return hmac.compare_digest(mac.encode("utf-8"), expected.encode("ascii"))

    def _digest(self, task: Task, password: str) -> bytes:
        message = "\0".join((task.task_id, task.password_hash, password))
        return hmac.new(self._key, message.encode("utf-8"), hashlib.sha256).digest()

    def _remember(self, digest: bytes, until: float) -> None:
        if len(self._verified) >= _MAX_REMEMBERED:
            now = time.monotonic()
            self._verified = {k: t for k, t in self._verified.items() if t > now}
            if len(self._verified) >= _MAX_REMEMBERED:
                self._verified.clear()
        self._verified[digest] = until
