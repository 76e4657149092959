"""Retries in one place: which errors are worth another attempt, and how long to wait.

Every retrying loop of AGATA takes its policy from here: the bus's first connection to
the broker (:mod:`agata.bus.amqp_bus`), the events held through a broker outage
(:mod:`agata.cloud.services.events`), the ends of tasks the store refused
(:mod:`agata.cloud.services.task_ends`) and every retry of the edge agent (cloud calls,
downloads, reports, the push stream, cycles after a failure).

- :func:`is_transient` is the one answer to "may the same call succeed later?".
  Transient: ``UNAVAILABLE`` (503: down, busy, the bus unreachable), ``TIMEOUT`` (504),
  ``RATE_LIMITED`` (429) and any other 5xx (``INTERNAL``: a crash of the other side is
  not a fault of the request). 429 counts: a 429 refuses *now*, not the request — the
  gateway sends it for too many downloads or slow bodies of one client at once and the
  same call succeeds once one of them ends, usually with ``Retry-After`` saying when
  (RFC 6585 §4); a client that gave up on it would drop a report or a download that
  the cloud only asked to come later. Every 4xx other than 429 is the request's own
  fault and is never retried.
- :class:`Backoff` gives the delays: exponential, capped, with jitter so that a fleet
  that lost the cloud at the same moment does not come back in the same instant;
  :meth:`Backoff.after` honours a ``Retry-After``.
- :class:`StateLog` logs a retrying loop's state only when it changes, so an outage of an
  hour is two lines in the log, not thousands.
"""

from __future__ import annotations

import logging
import random
from typing import Final

from agata.errors import AgataError, ErrorCode

__all__ = ["TRANSIENT_CODES", "Backoff", "StateLog", "is_transient"]

#: The codes after which the same call may succeed later (see the module docstring).
TRANSIENT_CODES: Final = frozenset(
    {ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.RATE_LIMITED, ErrorCode.INTERNAL}
)


def is_transient(error: AgataError) -> bool:
    """Whether trying the same call again later may succeed: 429, 503, 504 and any
    other 5xx. Never true for another 4xx (the request itself is wrong)."""
    return error.code in TRANSIENT_CODES or error.status_code >= 500


class Backoff:
    """Delays ``initial * factor**n``, capped at ``maximum``, each with +-``jitter``.

    Jitter spreads a fleet of devices that lost the cloud at the same moment, so they
    do not all come back in the same instant. One instance per retrying loop: it
    counts that loop's attempts (:meth:`reset` after a success); :meth:`fresh` makes
    a new one with the same policy for a loop of its own.
    """

    def __init__(
        self,
        initial: float = 0.2,
        maximum: float = 30.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("invalid backoff parameters")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self.attempt = 0
        self._rng = rng or random.Random()

    def fresh(self) -> Backoff:
        """A new backoff with this one's policy, at its first attempt."""
        return Backoff(self.initial, self.maximum, factor=self.factor, jitter=self.jitter)

    def next(self) -> float:
        """The delay before the next attempt; each call makes the following one longer."""
        base = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        spread = base * self.jitter
        return max(0.0, base + self._rng.uniform(-spread, spread))

    def after(self, retry_after: float | None) -> float:
        """The delay before the next attempt when the other side asked for
        ``retry_after`` seconds (``Retry-After`` of a 503/429; None: it did not say): at
        least that, plus up to as much again at random, so a fleet refused in one
        instant comes back spread over a window; and never shorter than :meth:`next`
        (which it advances), so a side that keeps refusing is asked less and less
        often."""
        delay = self.next()
        if retry_after is None or retry_after <= 0:
            return delay
        return max(delay, retry_after * (1.0 + self._rng.random()))

    def reset(self) -> None:
        """Back to the first delay (after a success)."""
        self.attempt = 0


class StateLog:
    """Logs a state only when it differs from the last one logged (``cloud up``/``down``).

    A device that loses the cloud for an hour writes two lines, not thousands.
    """

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._logger = logger
        self._what = what
        self.state: str | None = None

    def set(self, state: str, detail: str = "", *, level: int = logging.INFO) -> bool:
        """Record ``state``; log it when it changed. Returns whether it changed."""
        if state == self.state:
            return False
        self.state = state
        if detail:
            self._logger.log(level, "%s: %s (%s)", self._what, state, detail)
        else:
            self._logger.log(level, "%s: %s", self._what, state)
        return True
