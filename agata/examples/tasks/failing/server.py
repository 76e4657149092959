"""Server side of the failing task (experiment 2's task E): a plain FedAvg server.

It keeps the digits task's contract -- ``python server.py <work_path> --address
HOST:PORT --rounds N --min-clients K`` -- and waits for its clients the same way, but it
never gets any: this bundle's client fails at start. The task runtime stops it.

Reports on stdout with ``TaskReporter``: "Started", then "Finished" should the rounds
ever complete, or an ``error`` line and exit code 1. It trains no model.
Arguments of the digits server that mean nothing here (``--accuracy-trigger``, ...) are
accepted and ignored, so the two tasks can be created with the same arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

# Before anything imports flwr: Flower's telemetry posts to its servers by default.
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"

from agata.runtime import TaskReporter

log = logging.getLogger("failing.server")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(f"{self.prog}: {message}")


def parse_args(argv: list[str]) -> tuple[Any, list[str]]:
    parser = _Parser(prog="server.py", description=__doc__.splitlines()[0])
    parser.add_argument("work_path", nargs="?", default=None, help="ignored")
    parser.add_argument("--address", default="127.0.0.1:8080", help="HOST:PORT to listen on")
    parser.add_argument("--rounds", type=int, default=3, help="number of rounds")
    parser.add_argument("--min-clients", type=int, default=2, help="clients per round")
    args, ignored = parser.parse_known_args(argv)
    if args.rounds < 1 or args.min_clients < 1:
        parser.error("--rounds and --min-clients must be >= 1")
    return args, ignored


def run(argv: list[str], reporter: TaskReporter) -> None:
    import flwr.server
    import numpy as np
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAvg

    args, ignored = parse_args(argv)
    if ignored:
        reporter.send_print(f"ignoring arguments {' '.join(ignored)}")

    flwr.server.start_server(
        server_address=args.address,
        config=flwr.server.ServerConfig(num_rounds=args.rounds),
        strategy=FedAvg(
            min_fit_clients=args.min_clients,
            min_evaluate_clients=args.min_clients,
            min_available_clients=args.min_clients,
            fraction_evaluate=0.0,
            initial_parameters=ndarrays_to_parameters([np.zeros(1)]),
        ),
    )


def main(argv: list[str]) -> int:
    reporter = TaskReporter()
    try:
        run(argv, reporter)
    except SystemExit as exc:
        if exc.code in (0, None):
            raise  # stopped by SIGINT/SIGTERM (Flower exits 0): neither Finished nor error
        # Flower ends the process itself on some errors, e.g. a port already in use.
        reporter.send_error(RuntimeError(str(exc.code)))
        return 1
    except Exception as exc:
        log.exception("server failed")
        reporter.send_error(exc)
        return 1
    reporter.finished()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
