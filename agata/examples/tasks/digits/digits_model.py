"""The digits model and data, shared by ``server.py`` and ``client.py`` of this bundle.

A multinomial logistic regression (softmax) written in numpy, trained by mini-batch SGD
on scikit-learn's bundled ``load_digits`` (1,797 8x8 images, 10 classes; no download).

The data split is fixed by a seed so every process of a task sees the same split: the
test split is held out (the server evaluates on all of it, a client on its slice), the
training split is cut into ``num_clients`` disjoint partitions, one per client index.
Features are standardized with the training split's mean and standard deviation.

The data is scikit-learn's own ``digits.csv.gz``, read directly when it is where
scikit-learn keeps it: importing ``sklearn.datasets`` costs ~0.8 s and ~95 MB, most of a
task process's start-up. ``sklearn.datasets.load_digits`` is the fallback.

The model is a list of numpy arrays ``[weights (64, 10), bias (10,)]``: exactly what
Flower's ``NumPyClient`` exchanges.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_FEATURES = 64
N_CLASSES = 10
N_SAMPLES = 1797

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
            raise ValueError(f"partition index {index} out of range for {count} partition(s)")
        rows = np.array_split(np.arange(len(self)), count)[index]
        return Split(self.x[rows], self.y[rows])


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits data set as ``(x (1797, 64) float64, y (1797,) int64)``."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    for folder in (spec and spec.submodule_search_locations) or []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            if table.shape == (N_SAMPLES, N_FEATURES + 1):
                return table[:, :N_FEATURES], table[:, N_FEATURES].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data.astype(np.float64), digits.target.astype(np.int64)


def load_data(seed: int = 42, test_fraction: float = 0.25) -> tuple[Split, Split]:
    """The (train, test) splits of the digits data set, shuffled by ``seed``."""
    x, y = read_digits()
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    n_test = round(len(y) * test_fraction)
    x_train, y_train, x_test, y_test = x[n_test:], y[n_test:], x[:n_test], y[:n_test]
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # some border pixels are always 0
    return (
        Split((x_train - mean) / std, y_train),
        Split((x_test - mean) / std, y_test),
    )


def init_params() -> Params:
    """All-zero weights and bias (the softmax of a zero model is uniform)."""
    return [np.zeros((N_FEATURES, N_CLASSES)), np.zeros(N_CLASSES)]


def _probabilities(params: Params, x: np.ndarray) -> np.ndarray:
    weights, bias = params
    logits = x @ weights + bias
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def evaluate(params: Params, data: Split) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``params`` on ``data``."""
    if len(data) == 0:
        return 0.0, 0.0
    probs = _probabilities(params, data.x)
    picked = probs[np.arange(len(data)), data.y]
    loss = float(-np.log(np.clip(picked, 1e-12, None)).mean())
    accuracy = float((probs.argmax(axis=1) == data.y).mean())
    return loss, accuracy


def train(
    params: Params,
    data: Split,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    l2: float = 1e-4,
    rng: np.random.Generator,
) -> Params:
    """``epochs`` passes of mini-batch SGD on ``data``; returns new arrays."""
    weights, bias = params[0].copy(), params[1].copy()
    n = len(data)
    one_hot = np.eye(N_CLASSES)[data.y]
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            x, target = data.x[rows], one_hot[rows]
            error = _probabilities([weights, bias], x) - target  # d loss / d logits
            weights -= learning_rate * (x.T @ error / len(rows) + l2 * weights)
            bias -= learning_rate * error.mean(axis=0)
    return [weights, bias]
