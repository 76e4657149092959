"""Criteria used as a device filter: the indexed conditions they hand to the store give
exactly the devices the criteria compiler matches, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agata.cloud.criteria.criteria_language import compile_criteria
from agata.cloud.criteria.criteria_sql import indexed_terms
from agata.cloud.criteria.device_query import parse_device_filter
from agata.cloud.services.views import device_attributes
from agata.store import Store, create_store

EXPRESSIONS = [
    "data_qnt > 50",
    "50 < data_qnt",
    "data_qnt != 10",
    "data_qnt == 10 and site == 'lab'",
    '"gps" in sensors and data_qnt >= 0',
    "battery >= 20",
    "battery != 20",
    "site == 'lab' or site == 'field'",
    "flag == 1",
    "site > 'k'",
    "note == 'x'",
    "data_qnt > -1 and not (battery < 30)",
    "site == 3",
    "data_qnt > 80 or 'camera' in sensors",
    "(data_qnt > 50 and 'gps' in sensors) or battery >= 55 or site == 3",
    "data_qnt >= 0 and (site == 'lab' or (battery > 50 and flag == 1))",
    "site == 'lab' or note == 'x'",
    "data_qnt > 50 or site != 'lab'",
    "'camera' in sensors or site == 'lab'",
    "('gps' in sensors and site == 'lab') or 'camera' in sensors or battery >= 55",
]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fleet(request: pytest.FixtureRequest) -> Iterator[Store]:
    """The same five devices in SQLite and in a fresh PostgreSQL schema."""
    url = "sqlite://" if request.param == "sqlite" else request.getfixturevalue("pg_schema_url")
    store = create_store(url)
    store.upsert_device("a", data_qnt=10, sensors=["gps"], extra={"site": "lab", "battery": 20})
    store.upsert_device("b", data_qnt=90, extra={"site": "field", "battery": 55, "flag": True})
    store.upsert_device("c", sensors=["gps", "camera"], extra={"site": 3, "note": "x" * 600})
    store.upsert_device("d", data_qnt=60, extra={"battery": "full", "flag": False})
    store.upsert_device("e")
    yield store
    store.close()


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_indexed_conditions_keep_the_criteria_meaning(fleet: Store, text: str) -> None:
    criteria = compile_criteria(text)
    expected = sorted(
        d.user_id for d in fleet.list_devices() if criteria.matches(device_attributes(d))
    )

    query = parse_device_filter(text, sort="user_id", descending=False, limit=50, offset=0)
    page = fleet.query_devices(query)

    assert [d.user_id for d in page.items] == expected
    assert page.total == len(expected)


def test_what_is_pushed_and_what_is_left_to_python() -> None:
    assert indexed_terms('data_qnt > 100 and "gps" in sensors').complete
    assert indexed_terms("site == 'lab'").complete
    assert not indexed_terms("site != 'lab'").complete  # a device without it: false
    assert not indexed_terms("a or b").complete
    narrowed = indexed_terms("data_qnt > 1 and (x or y)")
    assert narrowed.numbers == [("data_qnt", ">", 1.0)] and not narrowed.complete
    either = indexed_terms("site == 'lab' or (data_qnt > 5 and 'gps' in sensors)")
    assert either.complete and len(either.any_of) == 1
    lab, gps = either.any_of[0]
    assert lab.attributes == [("site", "=", "lab")]
    assert gps.numbers == [("data_qnt", ">", 5.0)] and gps.sensors == ["gps"]
    half = indexed_terms("data_qnt > 1 and (site == 'lab' or site != 'x')")
    assert not half.complete and half.any_of == []  # != is left whole to Python
