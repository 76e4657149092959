"""Selection criteria: results, refusals, robustness and isolation."""

from __future__ import annotations

import builtins
import keyword
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agata.cloud.criteria.criteria_language import (
    MAX_LENGTH,
    Criteria,
    CriteriaCache,
    compile_criteria,
    validate_criteria,
)
from agata.errors import AgataError, ErrorCode

DEVICE: dict[str, Any] = {
    "user_id": "pi-7",
    "data_qnt": 120,
    "avg_acc_contrib": 0.25,
    "avg_disconnection_per_round": 0.5,
    "sensors": ["camera", "microphone"],
    "extra": {"gpu": True, "os": "linux", "ram_gb": 4},
}


def refused(text: str) -> AgataError:
    with pytest.raises(AgataError) as info:
        compile_criteria(text)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    return info.value


# --- results ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("   \n\t ", True),
        ('(data_qnt > 50) and ("camera" in sensors)', True),
        ('(data_qnt > 500) and ("camera" in sensors)', False),
        ('"lidar" in sensors', False),
        ('"lidar" not in sensors', True),
        ("data_qnt >= 120 and avg_acc_contrib < 0.3", True),
        ("data_qnt > 200 or avg_disconnection_per_round <= 0.5", True),
        ("not (data_qnt > 200)", True),
        ("0 < data_qnt <= 120", True),
        ("0 < data_qnt < 100", False),
        ("1 < 2 < data_qnt < 100", False),
        ("user_id == 'pi-7'", True),
        ("user_id in ['pi-1', 'pi-7']", True),
        ("user_id in ('pi-1', 'pi-2')", False),
        ("user_id in {'pi-7'}", True),
        ("sensors == ['camera', 'microphone']", True),
        ("data_qnt * 2 - 40 > 199", True),
        ("data_qnt / 4 == 30", True),
        ("data_qnt % 7 == 1", True),
        ("-data_qnt < -100", True),
        ("+data_qnt == 120", True),
        # attributes of the device's free-form ``extra``
        ("gpu", True),
        ("gpu and os == 'linux' and ram_gb >= 4", True),
        ("os != 'android'", True),
        # booleans and literals
        ("True", True),
        ("False or None", False),
        ("1", True),
        ("[]", False),
        ("'camera' in 'camera-front'", True),
    ],
)
def test_typical_expressions(text: str, expected: bool) -> None:
    criteria = compile_criteria(text)

    assert criteria.matches(DEVICE) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("battery > 10", False),  # unknown name: the comparison is false
        ("battery < 10", False),
        ("battery == 10", False),
        ("battery != 10", False),
        ("not (battery > 10)", True),  # ...but only the comparison
        ("battery == None", True),
        ("battery is None", True),
        ("battery != None", False),
        ("gpu is not None", True),
        ("None == battery", True),
        ("battery in sensors", False),
        ("'x' in battery", False),
        ("battery + 1 > 0", False),
        ("battery", False),
    ],
)
def test_unknown_names_make_the_comparison_false(text: str, expected: bool) -> None:
    criteria = compile_criteria(text)

    assert criteria.matches(DEVICE) is expected


@pytest.mark.parametrize(
    "text",
    [
        "user_id > 5",  # str > int
        "sensors < 3",
        "5 in data_qnt",
        "user_id + 1 > 0",  # arithmetic on a string gives None
        "data_qnt / (data_qnt - 120) > 0",  # division by zero gives None
        "sensors * 2 == sensors",
        "data_qnt * 100000000000000000 > 0",  # beyond 1e18 gives None
    ],
)
def test_type_errors_evaluate_to_false(text: str) -> None:
    criteria = compile_criteria(text)

    assert criteria.matches(DEVICE) is False


def test_none_field_value_behaves_like_a_missing_one() -> None:
    device = {**DEVICE, "data_qnt": None}

    assert compile_criteria("data_qnt > 1").matches(device) is False
    assert compile_criteria("data_qnt == None").matches(device) is True


def test_device_fields_win_over_extra_attributes() -> None:
    device = {"data_qnt": 1, "extra": {"data_qnt": 1000}}

    assert compile_criteria("data_qnt > 100").matches(device) is False


def test_matches_never_raises_even_on_hostile_values() -> None:
    class Hostile:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("boom")

        def __bool__(self) -> bool:
            raise RuntimeError("boom")

        __hash__ = object.__hash__

    class BrokenMapping(Mapping[str, Any]):
        def __getitem__(self, key: str) -> Any:
            raise RuntimeError("boom")

        def __iter__(self) -> Iterator[str]:
            return iter(())

        def __len__(self) -> int:
            return 0

        def get(self, key: str, default: Any = None) -> Any:
            raise RuntimeError("boom")

    device = {"x": Hostile()}

    assert compile_criteria("x == 1").matches(device) is False
    assert compile_criteria("x").matches(device) is False
    assert compile_criteria("x or 1").matches(device) is False
    assert compile_criteria("x > 1").matches(BrokenMapping()) is False


def test_names_lists_what_the_expression_reads() -> None:
    criteria = compile_criteria("(data_qnt > 50) and ('camera' in sensors) or gpu")

    assert criteria.names == frozenset({"data_qnt", "sensors", "gpu"})
    assert compile_criteria("").matches_everything
    assert not criteria.matches_everything


def test_validate_criteria() -> None:
    validate_criteria("data_qnt > 1")
    validate_criteria(None)
    with pytest.raises(AgataError) as info:
        validate_criteria("data_qnt.real")
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_matching_is_fast() -> None:
    criteria = compile_criteria("(data_qnt > 50) and ('camera' in sensors)")
    runs = 20_000

    start = time.perf_counter()
    for _ in range(runs):
        criteria.matches(DEVICE)
    per_match = (time.perf_counter() - start) / runs

    assert per_match < 50e-6  # a few microseconds in practice; generous for slow CI


# --- refusals -------------------------------------------------------------------

ESCAPES = [
    "().__class__.__base__.__subclasses__()",
    "().__class__.__bases__[0].__subclasses__()",
    "__import__('os').system('id')",
    "__builtins__",
    "__import__",
    "[c for c in ()]",
    "{c for c in ()}",
    "{c: c for c in ()}",
    "(c for c in ())",
    "(lambda: 1)()",
    "lambda: 1",
    "sensors.__class__",
    "sensors.copy",
    "user_id.format",
    '"a"*10**9',
    '"a" * 1000000000',
    "[1] * 1000000000",
    "9**9**9",
    "2 ** 10",
    "10**18 * 10**18",
    "1 << 100000",
    'f"{x}"',
    'f"{sensors.__class__}"',
    "(x:=1)",
    "getattr(sensors, '__class__')",
    "exec('import os')",
    "eval('1')",
    "open('/etc/passwd')",
    "compile('1', '', 'eval')",
    "globals()",
    "vars()",
    "sensors[0]",
    "sensors[0:1]",
    "*sensors",
    "[*sensors]",
    "{**extra}",
    "{}",
    "1 if gpu else 0",
    "~data_qnt",
    "data_qnt // 2",
    "data_qnt @ 2",
    "data_qnt | 1",
    "b'bytes'",
    "1j",
    "...",
    "10**100",
    "123456789012345678901234567890",
    "1e999",
    "1 / 0",
    "gpu is True",
    "[data_qnt]",
    "[[1]]",
    "_private",
    "\uff3f\uff3fimport\uff3f\uff3f",  # fullwidth low lines normalise to __import__
    "x = 1",
    "import os",
    "data_qnt > 1; import os",
    "await x",
    "yield x",
    "x\x00",
    "(" * 150 + "1" + ")" * 150,
    "[" * 40 + "]" * 40,
    "(" * 300 + "1" + ")" * 300,
    "not " * 100 + "gpu",
    "-" * 100 + "1",
    " + ".join(["data_qnt"] * 120),
    "a" * 100_000,
    "'" + "a" * 100_000 + "'",
    " " * 2000,
]


@pytest.mark.parametrize("text", ESCAPES, ids=lambda t: repr(t[:40]))
def test_sandbox_escapes_are_refused_at_compile_time(text: str) -> None:
    error = refused(text)

    assert error.message.startswith("selection criteria")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("sensors.__class__", "attribute access is not allowed: '.__class__' (column 9)"),
        ("data_qnt > 1 and open('x')", "function calls are not allowed (column 18)"),
        ("sensors[0] == 'a'", "subscripts (indexing and slicing) are not allowed (column 1)"),
        ("[c for c in sensors]", "comprehensions are not allowed (column 1)"),
        ("(lambda: 1)", "lambda expressions are not allowed (column 2)"),
        ("f'{x}'", "f-strings are not allowed"),
        ("(x := 1)", "assignment expressions (:=) are not allowed"),
        ("9 ** 9", "operator '**' is not allowed"),
        ("__import__", "names starting with '_' are not allowed"),
        ("'a' * 3", "arithmetic is only allowed on numbers"),
        ("data_qnt >", "not a valid expression"),
        ("a" * (MAX_LENGTH + 1), "too long"),
        ("(1,\n sensors.x)", "(line 2, column 10)"),
    ],
)
def test_refusals_say_what_and_where(text: str, fragment: str) -> None:
    error = refused(text)

    assert fragment in error.message


def test_non_string_is_refused() -> None:
    with pytest.raises(AgataError) as info:
        compile_criteria(42)  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


# --- isolation -----------------------------------------------------------------


class RecordingDevice(dict[str, Any]):
    """A device that records every name the evaluator asks it for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.append(key)
        return super().get(key, default)


@pytest.mark.parametrize(
    "name",
    sorted(n for n in dir(builtins) if not n.startswith("_") and not keyword.iskeyword(n)),
)
def test_evaluation_cannot_reach_any_builtin(name: str) -> None:
    criteria = compile_criteria(f"{name} == None and {name} is None")
    device = RecordingDevice()

    result = criteria.matches(device)

    # the builtin's name resolves to nothing: only the device (and its extra) is consulted
    assert result is True
    assert set(device.asked) <= {name, "extra"}


def test_a_device_value_is_the_only_thing_a_name_can_reach() -> None:
    device = RecordingDevice(print="shadow", extra={"len": 3})

    assert compile_criteria("print == 'shadow' and len == 3").matches(device)
    assert set(device.asked) == {"print", "len", "extra"}


# --- cache -----------------------------------------------------------------------


def test_cache_compiles_each_expression_once_and_evicts_the_oldest() -> None:
    cache = CriteriaCache(maxsize=2)

    first = cache.get("data_qnt > 1")
    assert cache.get("data_qnt > 1") is first
    cache.get("data_qnt > 2")
    cache.get("data_qnt > 1")  # refresh: now "> 2" is the oldest
    cache.get("data_qnt > 3")

    assert len(cache) == 2
    assert cache.get("data_qnt > 1") is first
    assert isinstance(cache.get(None), Criteria)
    assert cache.matches("'camera' in sensors", DEVICE)


def test_cache_does_not_keep_invalid_expressions() -> None:
    cache = CriteriaCache()

    with pytest.raises(AgataError):
        cache.get("sensors.__class__")

    assert len(cache) == 0


# --- robustness ------------------------------------------------------------------

_atom = st.one_of(
    st.sampled_from(
        [
            "data_qnt",
            "sensors",
            "user_id",
            "gpu",
            "avg_acc_contrib",
            "unknown",
            "None",
            "True",
            "False",
            "'camera'",
            '"x"',
            "0",
            "1",
            "-1",
            "2.5",
            "1e18",
            "[1, 'a']",
            "(1,)",
            "{'a'}",
            "[]",
        ]
    ),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.text(alphabet="abc_'\"\\ ", max_size=5).map(repr),
)
_operator = st.sampled_from(
    [
        " and ",
        " or ",
        " == ",
        " != ",
        " < ",
        " <= ",
        " > ",
        " >= ",
        " in ",
        " not in ",
        " is ",
        " is not ",
        " + ",
        " - ",
        " * ",
        " / ",
        " % ",
        " ** ",
        " // ",
        ".",
        "[",
        ",",
    ]
)


@st.composite
def expressionish(draw: st.DrawFn) -> str:
    parts = [draw(_atom)]
    for _ in range(draw(st.integers(min_value=0, max_value=8))):
        parts.append(draw(_operator))
        if draw(st.booleans()):
            parts.append(draw(st.sampled_from(["not ", "-", "(", ""])))
        parts.append(draw(_atom))
        if draw(st.integers(0, 4)) == 0:
            parts.append(draw(st.sampled_from([")", "]", ""])))
    return "".join(parts)


_device = st.fixed_dictionaries(
    {},
    optional={
        "user_id": st.one_of(st.none(), st.text(max_size=5), st.integers()),
        "data_qnt": st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=3)),
        "avg_acc_contrib": st.one_of(st.none(), st.floats(allow_nan=True)),
        "sensors": st.one_of(st.none(), st.lists(st.text(max_size=6), max_size=4), st.text()),
        "extra": st.one_of(
            st.none(),
            st.dictionaries(st.sampled_from(["gpu", "unknown"]), st.integers() | st.booleans()),
        ),
    },
)


def _check_text(text: str, device: dict[str, Any]) -> None:
    try:
        criteria = compile_criteria(text)
    except AgataError as error:
        assert error.code is ErrorCode.INVALID_ARGUMENT
        return
    start = time.perf_counter()
    result = criteria.matches(device)
    elapsed = time.perf_counter() - start
    assert isinstance(result, bool)
    assert elapsed < 0.05


@pytest.mark.filterwarnings("ignore::SyntaxWarning", "ignore::DeprecationWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=200), device=_device)
def test_random_text_compiles_or_is_invalid(text: str, device: dict[str, Any]) -> None:
    _check_text(text, device)


@pytest.mark.filterwarnings("ignore::SyntaxWarning", "ignore::DeprecationWarning")
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=expressionish(), device=_device)
def test_random_expressions_compile_or_are_invalid(text: str, device: dict[str, Any]) -> None:
    _check_text(text, device)


@pytest.mark.filterwarnings("ignore::SyntaxWarning", "ignore::DeprecationWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.from_regex(
        r"\A[ (]*(not )?[a-z_]{1,8} ?(==|!=|<|>|<=|>=| in | not in |\*|\+|/|%|\*\*|\.) ?"
        r"[(\[]?[0-9a-z'\"._, ]{0,12}[)\]]?( (and|or) [a-z]{1,5} ?[<>]=? ?[0-9]{1,25})*[ )]*\Z"
    ),
    device=_device,
)
def test_regex_expressions_compile_or_are_invalid(text: str, device: dict[str, Any]) -> None:
    _check_text(text, device)
