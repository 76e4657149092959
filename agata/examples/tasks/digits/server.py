"""Server side of the digits task: FedAvg over a softmax regression on sklearn's digits.

Started by the task runtime (cwd = this bundle folder) as::

    python server.py <work_path> --address 0.0.0.0:8080 --rounds 3 --min-clients 2

It reports on stdout with ``TaskReporter`` (stdout is the protocol; Flower logs to
stderr): "Started", one ``model`` line per round with the global model's accuracy and
loss on the held-out test split, the ``accuracy_reached`` trigger once the accuracy
reaches ``--accuracy-trigger``, then "Finished" -- or an ``error`` line and exit code 1.
Before "Finished" it writes the final global model to ``<work_path>/global_model.npz``
and saves it as an artifact of the run (``TaskReporter.save_artifact``).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
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
    fraction,
    positive_float,
    positive_int,
    run_task,
)

from agata.runtime import TaskReporter  # noqa: E402

TRIGGER = "accuracy_reached"
MODEL_FILE = "global_model.npz"


def parse_args(argv: list[str]) -> Any:
    parser = TaskArgumentParser(prog="server.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--address",
        type=address,
        default="127.0.0.1:8080",
        help="address to listen on, HOST:PORT (default %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="number of FedAvg rounds (default %(default)s)",
    )
    parser.add_argument(
        "--min-clients",
        type=positive_int,
        default=2,
        help="clients needed to start each round (default %(default)s)",
    )
    parser.add_argument(
        "--accuracy-trigger",
        type=float,
        default=0.9,
        help=f"fire the {TRIGGER!r} trigger once the test accuracy reaches "
        "this value; above 1 never fires (default %(default)s)",
    )
    parser.add_argument(
        "--fraction-evaluate",
        type=fraction,
        default=0.0,
        help="fraction of clients that also evaluate the global model on "
        "their slice of the test split each round (default %(default)s)",
    )
    parser.add_argument(
        "--round-timeout",
        type=positive_float,
        default=None,
        help="seconds a round may take before Flower gives up on "
        "the clients that did not answer (default: no limit)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed of the train/test split; clients must use the same",
    )
    return parser.parse_args(argv)


class RoundReporter:
    """Turns Flower's per-round callbacks into protocol lines.

    Flower calls, in each round: ``fit_metrics`` (after aggregating the clients'
    updates), then ``evaluate`` (centrally, on the whole test split), then
    ``evaluate_metrics`` if clients evaluate too. ``evaluate`` is also called for round 0
    (the initial model); that round is not reported.
    """

    def __init__(self, reporter: TaskReporter, test: digits_model.Split, threshold: float):
        self._reporter = reporter
        self._test = test
        self._threshold = threshold
        self._lock = threading.Lock()
        self._train: dict[str, float] = {}
        self._round = 0
        self.trained_rounds = 0  # rounds in which at least one client's update arrived
        self.triggered = False
        self.last_accuracy: float | None = None
        self.last_params: digits_model.Params | None = None  # the global model, last round

    def fit_metrics(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        """``fit_metrics_aggregation_fn``: the clients' training metrics, weighted."""
        with self._lock:
            self.trained_rounds += 1
            self._train = _weighted(results, ("train_loss", "train_acc"))
            self._train["train_examples"] = sum(n for n, _ in results)
            self._train["clients"] = len(results)
            return dict(self._train)

    def evaluate(
        self, server_round: int, params: digits_model.Params, config: dict[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        """``evaluate_fn``: the global model on the test split; reports the round."""
        loss, accuracy = digits_model.evaluate(params, self._test)
        if server_round == 0:
            return loss, {"acc": accuracy}
        with self._lock:
            self._round = server_round
            train, self._train = self._train, {}
            self.last_params = [np.array(p, copy=True) for p in params]
        self._reporter.send_metrics(
            server_round, acc=accuracy, loss=loss, examples=len(self._test), **train
        )
        self.last_accuracy = accuracy
        if not self.triggered and accuracy >= self._threshold:
            self.triggered = True
            self._reporter.trigger(TRIGGER, f"{accuracy:.4f}")
        return loss, {"acc": accuracy}

    def evaluate_metrics(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        """``evaluate_metrics_aggregation_fn``: the clients' evaluation, weighted."""
        metrics = _weighted(results, ("acc",))
        examples = sum(n for n, _ in results)
        with self._lock:
            server_round = self._round
        self._reporter.send_print(
            f"round {server_round}: federated evaluation acc={metrics.get('acc', 0.0):.4f} "
            f"over {examples} examples from {len(results)} clients"
        )
        return metrics


def _weighted(results: list[tuple[int, dict[str, Any]]], names: tuple[str, ...]) -> dict:
    total = sum(n for n, _ in results)
    if total == 0:
        return {}
    return {
        name: sum(n * float(m[name]) for n, m in results if name in m) / total
        for name in names
        if any(name in m for _, m in results)
    }


def main(argv: list[str], reporter: TaskReporter) -> None:
    import flwr.server
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAvg

    args = parse_args(argv)

    _, test = digits_model.load_data(seed=args.seed)
    rounds = RoundReporter(reporter, test, args.accuracy_trigger)
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=args.fraction_evaluate,
        min_fit_clients=args.min_clients,
        min_evaluate_clients=args.min_clients,
        min_available_clients=args.min_clients,
        evaluate_fn=rounds.evaluate,
        on_fit_config_fn=lambda server_round: {"server_round": server_round},
        on_evaluate_config_fn=lambda server_round: {"server_round": server_round},
        initial_parameters=ndarrays_to_parameters(digits_model.init_params()),
        fit_metrics_aggregation_fn=rounds.fit_metrics,
        evaluate_metrics_aggregation_fn=rounds.evaluate_metrics,
    )
    flwr.server.start_server(
        server_address=args.address,
        config=flwr.server.ServerConfig(num_rounds=args.rounds, round_timeout=args.round_timeout),
        strategy=strategy,
    )
    if rounds.trained_rounds < args.rounds:
        # Flower logs a round in which every client failed and carries on; a session
        # that did not train in every round is reported as an error, not as Finished.
        raise RuntimeError(
            f"only {rounds.trained_rounds} of {args.rounds} rounds received client updates"
        )
    reporter.send_print(f"{args.rounds} rounds done; test accuracy {rounds.last_accuracy:.4f}")
    if args.work_path and rounds.last_params is not None:
        save_model(Path(args.work_path), rounds.last_params, reporter)


def save_model(work: Path, params: digits_model.Params, reporter: TaskReporter) -> Path:
    """Write the final global model to ``<work>/global_model.npz`` (``p0``, ``p1``, … in
    the order of ``digits_model.init_params``) and save it as an artifact of the run."""
    target = work / MODEL_FILE
    partial = work / f".{MODEL_FILE}.part"
    with open(partial, "wb") as handle:  # whole before it is named (and announced)
        np.savez(handle, **{f"p{i}": p for i, p in enumerate(params)})
    os.replace(partial, target)
    reporter.save_artifact(MODEL_FILE)
    return target


if __name__ == "__main__":
    sys.exit(run_task(main, sys.argv[1:]))
