"""What the criteria validator tells an operator beyond "valid": names no device has and
comparisons whose types cannot match.

A comparison of a name with a literal is a type mismatch when the literal is a string
and the name holds numbers (``data_qnt > "abc"``), or the other way round — for the
number fields always, for an ``extra`` attribute when every device that has it holds the
other type. Such a comparison is false on every device
(:mod:`agata.cloud.criteria.criteria_language`), which is almost never what the operator meant.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from agata.cloud.services.views import NUMBER_FIELDS

__all__ = ["type_mismatches"]

_KINDS = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}


def _kind(value: Any) -> str | None:
    return _KINDS.get(type(value))


def _held_kinds(devices: Iterable[Mapping[str, Any]], names: set[str]) -> dict[str, set[str]]:
    held: dict[str, set[str]] = {name: set() for name in names}
    for device in devices:
        for name in names:
            kind = _kind(device.get(name))
            if kind is not None:
                held[name].add(kind)
    return held


def type_mismatches(text: str, devices: Iterable[Mapping[str, Any]]) -> list[str]:
    """Sentences naming each comparison of ``text`` (valid criteria) that compares a name
    with a literal of a type the name never holds on ``devices``."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return []
    pairs: list[tuple[str, Any, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, (a, b) in zip(node.ops, itertools.pairwise(operands), strict=False):
            if isinstance(op, ast.In | ast.NotIn | ast.Is | ast.IsNot):
                continue
            for x, y in ((a, b), (b, a)):
                if isinstance(x, ast.Name) and isinstance(y, ast.Constant):
                    if y.value is not None and _kind(y.value) is not None:
                        pairs.append((x.id, y.value, ast.unparse(node)))
    if not pairs:
        return []
    held = _held_kinds(devices, {name for name, _, _ in pairs if name not in NUMBER_FIELDS})
    out: list[str] = []
    for name, literal, where in pairs:
        kinds = {"a number"} if name in NUMBER_FIELDS else held.get(name, set())
        wanted = _kind(literal)
        if kinds and wanted not in kinds and not ({wanted, "a number"} <= kinds | {"a boolean"}):
            sentence = (
                f"{name} is {' or '.join(sorted(kinds))} on the devices, compared with "
                f"{wanted} ({literal!r}) in `{where}`: false on every device"
            )
            if sentence not in out:
                out.append(sentence)
    return out
