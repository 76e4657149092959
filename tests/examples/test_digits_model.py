"""The digits bundle's model and data, without Flower."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("sklearn")

BUNDLE = Path(__file__).resolve().parents[2] / "examples" / "tasks" / "digits"


@pytest.fixture(scope="module")
def digits_model() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_model", BUNDLE / "digits_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_direct_read_matches_load_digits(digits_model: ModuleType) -> None:
    from sklearn.datasets import load_digits

    x, y = digits_model.read_digits()

    digits = load_digits()
    assert np.array_equal(x, digits.data)
    assert np.array_equal(y, digits.target)


def test_split_is_fixed_and_standardized(digits_model: ModuleType) -> None:
    train, test = digits_model.load_data(seed=42)
    again, _ = digits_model.load_data(seed=42)

    assert (len(train), len(test)) == (1348, 449)
    assert np.array_equal(train.x, again.x) and np.array_equal(train.y, again.y)
    assert np.allclose(train.x.mean(axis=0), 0.0)
    assert set(np.unique(test.y)) == set(range(10))


def test_partitions_are_disjoint_and_cover_the_split(digits_model: ModuleType) -> None:
    train, _ = digits_model.load_data(seed=42)

    parts = [train.part(index, 3) for index in range(3)]

    assert sum(len(part) for part in parts) == len(train)
    assert np.array_equal(np.concatenate([part.x for part in parts]), train.x)
    with pytest.raises(ValueError):
        train.part(3, 3)


def test_training_one_partition_beats_chance_by_far(digits_model: ModuleType) -> None:
    train, test = digits_model.load_data(seed=42)
    params = digits_model.init_params()
    loss_before, _ = digits_model.evaluate(params, test)

    params = digits_model.train(
        params,
        train.part(0, 2),
        epochs=5,
        learning_rate=0.05,
        batch_size=32,
        rng=np.random.default_rng(0),
    )

    loss, accuracy = digits_model.evaluate(params, test)
    assert loss < loss_before
    assert accuracy > 0.85
