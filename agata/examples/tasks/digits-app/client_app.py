"""The ClientApp: trains the global model on this node's partition, evaluates it.

The node config says which partition: ``partition-id`` and ``num-partitions`` (AGATA
builds them from the task's client arguments, e.g. ``partition-id={partition_id}``).
"""

from __future__ import annotations

from digits_task import evaluate, load_data, train
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _partition(context: Context):  # type: ignore[no-untyped-def]
    index = int(context.node_config.get("partition-id", 0))
    count = int(context.node_config.get("num-partitions", 1))
    train_split, test_split = load_data()
    return train_split.part(index, count), test_split.part(index, count)


@app.train()
def train_model(msg: Message, context: Context) -> Message:
    """One round of local training from the arrays the ServerApp sent."""
    train_split, _ = _partition(context)
    params = msg.content["arrays"].to_numpy_ndarrays()
    config = context.run_config
    server_round = int(msg.content["config"].get("server-round", 1))
    new = train(
        params,
        train_split,
        epochs=int(config.get("local-epochs", 5)),
        learning_rate=float(config.get("learning-rate", 0.1)),
        batch_size=int(config.get("batch-size", 32)),
        seed=server_round,
    )
    loss, accuracy = evaluate(new, train_split)
    metrics = MetricRecord(
        {"train_loss": loss, "train_acc": accuracy, "num-examples": len(train_split)}
    )
    content = RecordDict({"arrays": ArrayRecord(new), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_model(msg: Message, context: Context) -> Message:
    """The global model on this node's slice of the test split."""
    _, test_split = _partition(context)
    loss, accuracy = evaluate(msg.content["arrays"].to_numpy_ndarrays(), test_split)
    metrics = MetricRecord(
        {"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(test_split)}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
