"""How every ``agata`` command logs: one format on stderr, noisy libraries quieted.

A leaf module: command modules import it, it imports no command module.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging"]


def setup_logging(level: str = "INFO") -> None:
    """Log at ``level`` to stderr (stdout stays for what a command prints)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level != "DEBUG":
        # A broker outage is handled by agata.bus (one warning, then "reconnected") and
        # aio_pika.robust_connection says why each reconnection attempt failed; these two
        # would add a traceback and one ERROR per channel and per attempt.
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
        logging.getLogger("aio_pika.tools").setLevel(logging.CRITICAL)
        # httpx logs every request at INFO: an agent would write a line per poll, for
        # ever, and one per downloaded file. Failures are logged by agata.edge.
        logging.getLogger("httpx").setLevel(logging.WARNING)
