"""Short-lived download grants: a device that may fetch one file of a task may fetch
the others for a few seconds without the check being made again.

An agent downloads a bundle one file per request. Checking each request in full (the
device's offers: every running task's criteria against its record) is a bus call per
file; a grant makes the second and later files of a bundle cost only the file read
(docs/benchmarks.md, "Download grants", has the figures).
Grants of a task end when the cloud notifies that the task changed (stopped, updated,
deleted), and a device's when its record changed. Notifications travel apart from
replies, so for a moment (and for up to ``GRANT_SECONDS`` if one is lost) a device
that matched a task may still download it -- the bundle is no secret from that
device, which has just downloaded part of it.
"""

from __future__ import annotations

import time

#: Seconds a positive download check is trusted for the same device and task.
GRANT_SECONDS = 5.0
#: Grants held at most; past this the oldest half is dropped.
MAX_GRANTS = 20_000


class DownloadGrants:
    def __init__(self, seconds: float = GRANT_SECONDS, limit: int = MAX_GRANTS) -> None:
        self.seconds = seconds
        self.limit = limit
        self._until: dict[tuple[str, str], float] = {}

    def allowed(self, device: str, task_id: str) -> bool:
        until = self._until.get((device, task_id))
        if until is None:
            return False
        if until <= time.monotonic():
            del self._until[(device, task_id)]
            return False
        return True

    def grant(self, device: str, task_id: str) -> None:
        if len(self._until) >= self.limit:
            # Insertion order is expiry order (fixed lifetime): drop the oldest half.
            for key in list(self._until)[: self.limit // 2]:
                del self._until[key]
        self._until.pop((device, task_id), None)
        self._until[(device, task_id)] = time.monotonic() + self.seconds

    def revoke_task(self, task_id: str) -> None:
        for key in [k for k in self._until if k[1] == task_id]:
            del self._until[key]

    def revoke_device(self, device: str) -> None:
        for key in [k for k in self._until if k[0] == device]:
            del self._until[key]

    def __len__(self) -> int:
        return len(self._until)
