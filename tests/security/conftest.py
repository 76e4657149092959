"""Fixtures: one seeded cloud in a background thread per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import WHEEL, Seeded, ThreadedCloud


@pytest.fixture(scope="module")
def threaded_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedCloud]:
    root = tmp_path_factory.mktemp("cloud")
    (root / "wheels").mkdir()
    (root / "wheels" / WHEEL).write_bytes(b"a wheel for the auth matrix")
    cloud = ThreadedCloud(root, wheelhouse=root / "wheels")
    with cloud:
        yield cloud


@pytest.fixture(scope="module")
def seeded(threaded_cloud: ThreadedCloud) -> Seeded:
    assert threaded_cloud.seeded is not None
    return threaded_cloud.seeded
