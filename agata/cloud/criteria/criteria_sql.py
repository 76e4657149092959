"""The parts of a selection-criteria expression the store's indexes can answer.

A criteria expression used as a device filter is evaluated in Python on every candidate
(:mod:`agata.cloud.criteria.device_query`). Its top-level ``and`` terms of these shapes are also
handed to the store as indexed conditions, so the scan covers only what they let through:

- ``NUMBER_FIELD <op> number`` (``== != < <= > >=``, either side),
- ``attribute <op> number`` and ``attribute == "text"`` on an ``extra`` attribute,
- ``"name" in sensors``,
- an ``or`` of alternatives each made only of such terms (or of such groups): one
  group of alternatives the store ORs (``site == "lab" or site == "field"``).

Each condition holds on exactly the devices for which its term is true (a device
without the value fails both), so narrowing first never loses a match. When every term
translated, the conditions are the whole expression and no Python evaluation is needed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from agata.cloud.services.views import NUMBER_FIELDS
from agata.store.queries import INDEXED_NAME_MAX, INDEXED_TEXT_MAX

__all__ = ["IndexedTerms", "indexed_terms"]

_OPS: dict[type[ast.cmpop], str] = {
    ast.Eq: "=",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
}
_FLIPPED = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


@dataclass
class IndexedTerms:
    numbers: list[tuple[str, str, float]] = field(default_factory=list)
    attributes: list[tuple[str, str, str | float]] = field(default_factory=list)
    sensors: list[str] = field(default_factory=list)
    #: Each group holds when one of its alternatives (all of whose conditions) does.
    any_of: list[list[IndexedTerms]] = field(default_factory=list)
    #: Every top-level term translated: the conditions are the whole expression.
    complete: bool = True


def _number(node: ast.expr) -> float | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _number(node.operand)
        return None if inner is None else -inner
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if isinstance(node.value, bool):  # True < 2 is Python's, not an index's business
            return None
        value = float(node.value)
        return value if abs(value) != float("inf") else None
    return None


def _translate(node: ast.expr, out: IndexedTerms) -> bool:
    if not isinstance(node, ast.Compare) or len(node.ops) != 1:
        return False
    left, right, op = node.left, node.comparators[0], node.ops[0]
    if isinstance(op, ast.In):
        if (
            isinstance(right, ast.Name)
            and right.id == "sensors"
            and isinstance(left, ast.Constant)
            and isinstance(left.value, str)
        ):
            out.sensors.append(left.value)
            return True
        return False
    word = _OPS.get(type(op))
    if word is None:
        return False
    if isinstance(right, ast.Name) and not isinstance(left, ast.Name):
        left, right, word = right, left, _FLIPPED[word]
    if not isinstance(left, ast.Name) or left.id in ("user_id", "sensors"):
        return False
    name, number = left.id, _number(right)
    if name in NUMBER_FIELDS:
        if number is None:
            return False
        out.numbers.append((name, word, number))
        return True
    if len(name) > INDEXED_NAME_MAX:
        return False
    if number is not None and word != "!=":  # != also holds for a device without it
        out.attributes.append((name, word, number))
        return True
    text = right.value if isinstance(right, ast.Constant) else None
    if word == "=" and isinstance(text, str) and len(text) <= INDEXED_TEXT_MAX:
        out.attributes.append((name, "=", text))
        return True
    return False


def _conjunction(node: ast.expr, out: IndexedTerms) -> bool:
    """The terms of ``node`` (an ``and``, or one term) into ``out``; True when every
    term translated."""
    is_and = isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And)
    complete = True
    for term in node.values if is_and else [node]:  # type: ignore[attr-defined]
        if _translate(term, out):
            continue
        group = _alternatives(term)
        if group is None:
            complete = False
        else:
            out.any_of.append(group)
    return complete


def _alternatives(node: ast.expr) -> list[IndexedTerms] | None:
    """``node`` as a group of alternatives, if it is an ``or`` every alternative of
    which translates whole (else None: one that did not would match every device)."""
    if not (isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or)):
        return None
    group = []
    for value in node.values:
        alternative = IndexedTerms()
        if not _conjunction(value, alternative):
            return None
        group.append(alternative)
    return group


def indexed_terms(text: str) -> IndexedTerms:
    """The indexed conditions implied by valid criteria ``text`` (see the module)."""
    out = IndexedTerms()
    try:
        body = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        out.complete = False
        return out
    out.complete = _conjunction(body, out)
    return out
