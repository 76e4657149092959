"""The answers to ``rpc_exec_client_requesting_task``, kept encoded between polls.

Most of a poll's answer does not change between one poll and the next: the running
tasks and the device's attributes stay as they were, so the same criteria give the
same matches and the same offers the same bytes. The cache keeps, per device, the ids
of the tasks it matched under the attributes it had, and per *offer variant* and set of
matches the encoded reply (devices with the same matches share one copy).

Invalidation, the contract the task manager keeps:

- :meth:`OfferCache.tasks_changed` MUST be called whenever the list of running tasks
  (or any field of one of them) may have changed: it ends every entry. The task manager
  calls it on a change it makes, on every ``task`` notification (another replica's
  change, a server side that ended) and when its periodic re-read of the running tasks
  finds them different (a lost notification);
- :meth:`OfferCache.device_changed` MUST be called when a device's record changed (the
  registry's ``device`` notification): it ends that device's entries;
- an entry is used only under attributes equal to those it was computed with, so a
  re-read of the device that finds it changed recomputes even without a notification.

A *variant* names what, besides the task, an offer depends on (today: whether the
task's download username/password is included, ``legacy``). Devices share an encoded
reply only within one variant; a variant whose offers depend on the device (its id or
its record) MUST include what they depend on in its key.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from agata.bus.envelope import RawJson


@dataclass(frozen=True, slots=True)
class _Matches:
    generation: int
    attributes: Mapping[str, Any]
    task_ids: tuple[str, ...]


class OfferCache:
    """Per-device matches and per-(variant, matches) encoded replies; bounded."""

    def __init__(self, max_devices: int) -> None:
        if max_devices < 1:
            raise ValueError("the offer cache needs room for at least one device")
        self.max_devices = max_devices
        self.generation = 0
        self._matches: dict[str, _Matches] = {}
        self._replies: dict[tuple[Hashable, tuple[str, ...]], RawJson] = {}

    def matches(self, user_id: str, attributes: Mapping[str, Any]) -> tuple[str, ...] | None:
        """The task ids this device matched, if still valid under ``attributes``."""
        entry = self._matches.get(user_id)
        if entry is None or entry.generation != self.generation:
            return None
        if entry.attributes is not attributes and entry.attributes != attributes:
            return None
        return entry.task_ids

    def remember_matches(
        self, user_id: str, attributes: Mapping[str, Any], task_ids: tuple[str, ...]
    ) -> None:
        if len(self._matches) >= self.max_devices and user_id not in self._matches:
            self._matches.clear()
        self._matches[user_id] = _Matches(self.generation, attributes, task_ids)

    def reply(self, variant: Hashable, task_ids: tuple[str, ...]) -> RawJson | None:
        """The encoded reply of these matches in this variant, if computed already."""
        return self._replies.get((variant, task_ids))

    def remember_reply(self, variant: Hashable, task_ids: tuple[str, ...], reply: RawJson) -> None:
        if len(self._replies) >= self.max_devices:
            self._replies.clear()
        self._replies[(variant, task_ids)] = reply

    def tasks_changed(self) -> None:
        """Running tasks may differ: every entry ends."""
        self.generation += 1
        self._matches.clear()
        self._replies.clear()

    def device_changed(self, user_id: str) -> None:
        """This device's record changed: its entries end."""
        self._matches.pop(user_id, None)

    def __len__(self) -> int:
        return len(self._matches)
