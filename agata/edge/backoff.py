"""Exponential backoff with jitter, and a logger that speaks once per state change.

Every retry of the agent (cloud calls, downloads, the push stream, cycles after a
failure) draws its delays from :class:`Backoff`, so the policy lives in one place; a
cloud that answered 503/429 with ``Retry-After`` is honoured by :meth:`Backoff.after`.
"""

from __future__ import annotations

import logging
import random

__all__ = ["Backoff", "StateLog"]


class Backoff:
    """Delays ``initial * factor**n``, capped at ``maximum``, each with +-``jitter``.

    Jitter spreads a fleet of devices that lost the cloud at the same moment, so they
    do not all come back in the same instant.
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

    def next(self) -> float:
        """The delay before the next attempt; each call makes the following one longer."""
        base = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        spread = base * self.jitter
        return max(0.0, base + self._rng.uniform(-spread, spread))

    def after(self, retry_after: float | None) -> float:
        """The delay before the next attempt when the cloud asked for ``retry_after``
        seconds (``Retry-After`` of a 503/429; None: it did not say): at least that,
        plus up to as much again at random, so a fleet refused in one instant comes back
        spread over a window; and never shorter than :meth:`next` (which it advances),
        so a cloud that keeps refusing is asked less and less often."""
        delay = self.next()
        if retry_after is None or retry_after <= 0:
            return delay
        return max(delay, retry_after * (1.0 + self._rng.random()))

    def reset(self) -> None:
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
