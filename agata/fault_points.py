"""Named points where a fault test can freeze a real process, to kill it right there.

A crash test needs the process to die *between* two steps (a file written, its listing
not yet recorded). With ``AGATA_PAUSE_AT=<point>`` in a process's environment, the first
time the process reaches :func:`pause_point` of that name it writes its pid to the file
named by ``AGATA_PAUSE_MARKER`` (if set) and then sleeps until it is killed; the test waits
for the marker and sends SIGKILL. Without the variable (always, outside such tests) a
pause point costs one lookup in ``os.environ``. The pause logs a warning, so a variable
set by mistake is visible in the log.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

PAUSE_AT_ENV: Final = "AGATA_PAUSE_AT"
PAUSE_MARKER_ENV: Final = "AGATA_PAUSE_MARKER"


def pause_point(name: str) -> None:
    """Freeze the whole process here (until killed) if ``AGATA_PAUSE_AT`` names ``name``."""
    if os.environ.get(PAUSE_AT_ENV) != name:
        return
    logger.warning("pausing at %r until killed (%s is set)", name, PAUSE_AT_ENV)
    marker = os.environ.get(PAUSE_MARKER_ENV)
    if marker:
        Path(marker).write_text(str(os.getpid()))
    while True:  # the test ends the process; no other way out on purpose
        time.sleep(3600)
