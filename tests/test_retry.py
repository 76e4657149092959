"""agata.retry: the one transient-error check and backoff policy, used by every loop."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

import agata
from agata.errors import AgataError, ErrorCode
from agata.retry import Backoff, is_transient

PACKAGE = Path(agata.__file__).parent


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        (429, True),  # too many at once: the same call succeeds later (Retry-After)
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (409, False),
        (413, False),
    ],
)
def test_transient_is_429_and_5xx_only(status: int, transient: bool) -> None:
    assert is_transient(AgataError(status, "x")) is transient


def test_fresh_keeps_the_policy_and_starts_over() -> None:
    used = Backoff(0.5, 4.0, factor=3.0, jitter=0.0, rng=random.Random(1))
    used.next()
    used.next()

    fresh = used.fresh()

    assert [fresh.next() for _ in range(3)] == [0.5, 1.5, 4.0]
    assert used.attempt == 2


def test_retry_after_is_honoured_and_never_shortens_the_backoff() -> None:
    backoff = Backoff(1.0, 8.0, jitter=0.0, rng=random.Random(3))

    assert backoff.after(None) == 1.0
    assert 5.0 <= backoff.after(5.0) <= 10.0
    assert backoff.after(0.1) == 4.0  # the third attempt's own delay


def test_no_module_writes_its_own_backoff_loop() -> None:
    """Doubling delays by hand (``delay * 2``, ``min(delay * 2, …)``) belongs to
    agata.retry alone; the bus, events, task ends and the edge use Backoff. (The example
    tasks are task authors' code, run without AGATA: not checked.)"""
    doubling = re.compile(r"\b\w*delay\w*\s*\*\s*2\b")
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "retry.py"
        and "examples" not in path.parts
        and doubling.search(path.read_text())
    ]

    assert offenders == []


def test_edge_has_no_transient_check_of_its_own() -> None:
    """One answer to "retry?": agata.retry.is_transient (the edge had two, inline)."""
    client = (PACKAGE / "edge" / "cloud_client.py").read_text()

    assert "def is_transient" not in client
    assert "ErrorCode.RATE_LIMITED" not in client
    assert ErrorCode.RATE_LIMITED.value == 429
