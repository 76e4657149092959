"""The model and the data of the app: softmax regression in numpy on the digits set.

scikit-learn ships the digits data set (1,797 8x8 images, 10 classes) inside the
package: nothing is downloaded. The split is fixed by a seed, so every process of a run
sees the same one: the test split is held out (the ServerApp evaluates the global model
on it), the training split is cut into ``num_partitions`` disjoint partitions, one per
SuperNode (``partition-id`` of its node config).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_FEATURES = 64
N_CLASSES = 10

Params = list[np.ndarray]


@dataclass(frozen=True)
class Split:
    """Features ``x`` (n, 64) and labels ``y`` (n,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def part(self, index: int, count: int) -> Split:
        """Partition ``index`` of ``count`` disjoint, near-equal partitions."""
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"partition-id {index} out of range for {count} partition(s)")
        rows = np.array_split(np.arange(len(self)), count)[index]
        return Split(self.x[rows], self.y[rows])


def load_data(seed: int = 42, test_fraction: float = 0.25) -> tuple[Split, Split]:
    """The standardized (train, test) splits of the digits set, shuffled by ``seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data.astype(np.float64), digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    n_test = round(len(y) * test_fraction)
    x_train, y_train, x_test, y_test = x[n_test:], y[n_test:], x[:n_test], y[:n_test]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0  # border pixels that are always 0
    return Split((x_train - mean) / std, y_train), Split((x_test - mean) / std, y_test)


def init_params() -> Params:
    """All-zero weights (64, 10) and bias (10,)."""
    return [np.zeros((N_FEATURES, N_CLASSES)), np.zeros(N_CLASSES)]


def _probabilities(params: Params, x: np.ndarray) -> np.ndarray:
    logits = x @ params[0] + params[1]
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def evaluate(params: Params, data: Split) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``params`` on ``data``."""
    probs = _probabilities(params, data.x)
    picked = probs[np.arange(len(data)), data.y]
    loss = float(-np.log(np.clip(picked, 1e-12, None)).mean())
    return loss, float((probs.argmax(axis=1) == data.y).mean())


def train(
    params: Params, data: Split, *, epochs: int, learning_rate: float, batch_size: int, seed: int
) -> Params:
    """``epochs`` passes of mini-batch SGD on ``data``; returns new arrays."""
    rng = np.random.default_rng(seed)
    weights, bias = params[0].copy(), params[1].copy()
    one_hot = np.eye(N_CLASSES)[data.y]
    for _ in range(epochs):
        order = rng.permutation(len(data))
        for start in range(0, len(data), batch_size):
            rows = order[start : start + batch_size]
            error = _probabilities([weights, bias], data.x[rows]) - one_hot[rows]
            weights -= learning_rate * (data.x[rows].T @ error / len(rows) + 1e-4 * weights)
            bias -= learning_rate * error.mean(axis=0)
    return [weights, bias]
