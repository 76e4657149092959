"""Client side of the digits task: trains the softmax regression on its own partition.

Started by the edge agent (cwd = this bundle folder) as::

    python client.py <work_path> --address 127.0.0.1:8080 --client-index 0 --num-clients 2

or by hand, as the original second client was, with ``python client.py cli ...``.
It reports on stdout with ``TaskReporter``: "Started", one ``model`` line per round
(``acc``/``loss``/``examples`` of its locally trained model on its slice of the test
split, plus ``train_acc``/``train_loss``/``train_examples`` on its training partition),
then "Finished" when the server ends the session -- or an ``error`` line and exit 1.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

# Before anything imports flwr: Flower's telemetry posts to its servers by default.
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
# The bundle folder is the store's (cloud) or a verified cache (device): no __pycache__.
sys.dont_write_bytecode = True

import digits_model  # noqa: E402
import numpy as np  # noqa: E402
from tasklib import (  # noqa: E402
    TaskArgumentParser,
    address,
    non_negative_int,
    positive_float,
    positive_int,
    run_task,
)

from agata.runtime import TaskReporter  # noqa: E402


def parse_args(argv: list[str]) -> Any:
    parser = TaskArgumentParser(prog="client.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--address",
        type=address,
        default="127.0.0.1:8080",
        help="the task server's address, HOST:PORT (default %(default)s)",
    )
    parser.add_argument(
        "--client-index",
        type=non_negative_int,
        default=0,
        help="which partition of the training split to use (default %(default)s)",
    )
    parser.add_argument(
        "--num-clients",
        type=positive_int,
        default=2,
        help="number of partitions the training split is cut into (default %(default)s)",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=5,
        help="local epochs per round (default %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=32, help="mini-batch size (default %(default)s)"
    )
    parser.add_argument(
        "--learning-rate",
        type=positive_float,
        default=0.05,
        help="SGD learning rate (default %(default)s)",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=120.0,
        help="seconds to wait for the server to listen before failing; "
        "0 means forever (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of the train/test split; must match the server's"
    )
    args = parser.parse_args(argv)
    if args.client_index >= args.num_clients:
        parser.error(f"--client-index must be below --num-clients ({args.num_clients})")
    return args


def make_client(args: Any, reporter: TaskReporter) -> Any:
    """A ``NumPyClient`` over this client's partitions of the train and test splits."""
    from flwr.client import NumPyClient

    train_split, test_split = digits_model.load_data(seed=args.seed)
    train = train_split.part(args.client_index, args.num_clients)
    test = test_split.part(args.client_index, args.num_clients)
    rng = np.random.default_rng(args.seed * 1000 + args.client_index)

    class DigitsClient(NumPyClient):
        def get_parameters(self, config: dict[str, Any]) -> digits_model.Params:
            return digits_model.init_params()

        def fit(
            self, parameters: digits_model.Params, config: dict[str, Any]
        ) -> tuple[digits_model.Params, int, dict[str, Any]]:
            params = digits_model.train(
                parameters,
                train,
                epochs=args.epochs,
                learning_rate=args.learning_rate,
                batch_size=args.batch_size,
                rng=rng,
            )
            train_loss, train_acc = digits_model.evaluate(params, train)
            loss, acc = digits_model.evaluate(params, test)
            reporter.send_metrics(
                config.get("server_round", 0),
                acc=acc,
                loss=loss,
                examples=len(test),
                train_acc=train_acc,
                train_loss=train_loss,
                train_examples=len(train),
            )
            return params, len(train), {"train_loss": train_loss, "train_acc": train_acc}

        def evaluate(
            self, parameters: digits_model.Params, config: dict[str, Any]
        ) -> tuple[float, int, dict[str, Any]]:
            loss, acc = digits_model.evaluate(parameters, test)
            return loss, len(test), {"acc": acc}

    return DigitsClient()


def wait_for_server(address: str, max_wait: float) -> None:
    """Block until ``address`` accepts TCP connections (``max_wait`` <= 0: forever).

    Flower's legacy gRPC client fails at once if the server is not listening yet, and a
    client may well start before its server (by hand, or on a device that learns of the
    task early): wait for it here instead.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + max_wait if max_wait > 0 else None
    delay = 0.1
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2.0):
                return
        except OSError as exc:
            if deadline is not None and time.monotonic() + delay > deadline:
                raise ConnectionError(
                    f"task server at {address} not reachable within {max_wait:g} s: {exc}"
                ) from exc
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def main(argv: list[str], reporter: TaskReporter) -> None:
    import flwr.client
    import grpc

    args = parse_args(argv)

    client = make_client(args, reporter)
    wait_for_server(args.address, args.max_wait)
    try:
        flwr.client.start_client(server_address=args.address, client=client.to_client())
    except grpc.RpcError as exc:
        # The legacy transport raises the bare gRPC error when the server goes away.
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        raise ConnectionError(
            f"connection to the task server at {args.address} failed: {code}: {details}"
        ) from exc


if __name__ == "__main__":
    sys.exit(run_task(main, sys.argv[1:]))
