"""The ServerApp: FedAvg over the SuperNodes AGATA let join, evaluated centrally.

Each round's accuracy on the held-out test split is reported to AGATA with
:func:`agata.flower.report_round` (one TaskReporter ``model`` line in the ServerApp's
log, which AGATA follows and records as the run's metrics per round).
"""

from __future__ import annotations

from digits_task import evaluate, init_params, load_data
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from agata.flower import report_round

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    rounds = int(config.get("num-server-rounds", 3))
    min_nodes = int(config.get("min-nodes", 2))
    _, test_split = load_data()

    def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = evaluate(arrays.to_numpy_ndarrays(), test_split)
        if server_round > 0:  # round 0 is the initial model
            report_round(server_round, acc=accuracy, loss=loss)
        return MetricRecord({"acc": accuracy, "loss": loss})

    strategy = FedAvg(
        fraction_train=float(config.get("fraction-train", 1.0)),
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(init_params()),
        train_config=ConfigRecord({"lr": float(config.get("learning-rate", 0.1))}),
        num_rounds=rounds,
        evaluate_fn=central_evaluation,
    )
