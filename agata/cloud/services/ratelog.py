"""A warning that is written at most once per interval, however often it happens.

Some conditions recur with every poll of every device (an original device knocking
while ``--legacy-devices`` is off, a task whose arguments a device cannot fill in): the
operator must see them in the log, but a fleet polling every 10 s must not fill it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitedWarning"]


class RateLimitedWarning:
    """Writes ``logger.warning`` at most once per ``interval`` seconds.

    Occurrences in between are counted, and the next line written says how many were
    held back. One instance per condition (state lives on the instance).
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self.held_back = 0

    def warn(self, message: str, *args: object) -> bool:
        """Log ``message % args`` unless a line was written less than ``interval`` ago;
        True when it was written."""
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self.held_back += 1
            return False
        if self.held_back:
            self._logger.warning(
                message + " (and %d more like it in the last %.0f s)",
                *args,
                self.held_back,
                now - (self._last or now),
            )
        else:
            self._logger.warning(message, *args)
        self._last = now
        self.held_back = 0
        return True
