"""Which of the compatible tasks a device runs.

- ``one``: a single task at a time — the one already running while the cloud still
  offers it, else the first offered task that is not blocked (in quarantine, or already
  finished here).
- ``all``: every offered task that is not blocked, up to ``max_tasks``; tasks already
  running come first, so a new offer never displaces a running task.

The cloud's order of offers is kept: it is the operator's order of preference.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Literal

from agata.errors import AgataError, ErrorCode
from agata.protocol.offers import TaskOffer

__all__ = ["POLICIES", "Policy", "choose_tasks"]

Policy = Literal["one", "all"]
POLICIES: tuple[Policy, ...] = ("one", "all")


def choose_tasks(
    policy: Policy,
    offers: Sequence[TaskOffer],
    *,
    running: Collection[str] = (),
    blocked: Callable[[TaskOffer], bool] = lambda offer: False,
    max_tasks: int = 1,
) -> list[TaskOffer]:
    """The offers that should be running now (running ones first, then offer order)."""
    if policy == "one":
        limit = 1
    elif policy == "all":
        limit = max_tasks
    else:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, f"unknown policy {policy!r}; use one or all")
    if limit < 1:
        raise AgataError(ErrorCode.INVALID_ARGUMENT, "max_tasks must be at least 1")
    unique: dict[str, TaskOffer] = {}
    for offer in offers:
        unique.setdefault(offer.task_id, offer)
    kept = [offer for task_id, offer in unique.items() if task_id in running]
    fresh = [
        offer for task_id, offer in unique.items() if task_id not in running and not blocked(offer)
    ]
    return (kept + fresh)[:limit]
