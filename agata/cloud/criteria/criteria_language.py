"""Selection criteria: which devices may run a task.

A task's selection criteria are a boolean expression over a device record, e.g.
``(data_qnt > 50) and ("camera" in sensors)``. An empty (or all-blank) expression
matches every device.

Language
--------
- Names: the device fields (``user_id``, ``data_qnt``, ``avg_acc_contrib``,
  ``avg_disconnection_per_round``, ``sensors``) and any attribute of the device's
  free-form ``extra`` mapping, by name. Names starting with ``_`` are refused.
- Literals: numbers, strings, ``True``/``False``/``None`` and lists, tuples and sets
  of those.
- ``and``, ``or``, ``not``; comparisons ``== != < <= > >=``, ``in``, ``not in``
  (chains such as ``0 < data_qnt <= 100`` work); ``is``/``is not`` only with ``None``.
- Arithmetic ``+ - * / %`` and unary ``-``/``+`` on numbers only, every operand and
  result bounded by :data:`MAX_ABS_NUMBER` (so no string or list repetition, no
  ``**``, no shifts, no ``//``).

Everything else (attribute access, calls, subscripts, lambdas, comprehensions,
f-strings, ``:=``, starred expressions, dicts, conditional expressions) is refused at
compile time with ``INVALID_ARGUMENT`` and the place of the offending construct.
The text is bounded: :data:`MAX_LENGTH` characters, :data:`MAX_NODES` expression
nodes, :data:`MAX_DEPTH` levels of nesting.

Evaluation
----------
:meth:`Criteria.matches` never raises. A name missing from the device (and from its
``extra``) evaluates to ``None``; an arithmetic error (wrong type, division by zero,
out of bounds) also gives ``None``. A comparison with a ``None`` operand is false,
except an explicit test against the literal ``None`` (``x == None``, ``x != None``,
``x is None``, ``x is not None``). A comparison that fails (``"a" > 1``) is false and
logged at debug level. The rule is local to the comparison: ``not (x > 1)`` is true
for a device without ``x``.

Why this implementation is safe
-------------------------------
The text is parsed with ``ast.parse(mode="eval")`` and the tree is walked once by
:class:`_Compiler`, which knows an explicit whitelist of node types and turns each
into a small Python closure; any other node type is an error. Nothing is ever handed
to ``eval``/``exec``/``compile``-to-bytecode and no builtins or globals exist in the
evaluator: the only values an expression can reach are its own literals and the
values the device mapping returns for the names it contains, and the only operations
it can perform are the whitelisted operators, applied through guarded helpers. There
is no way to name an attribute, call anything or index anything, so the classic
escapes (``().__class__.__base__.__subclasses__()``, ``__import__``) have no node to
travel through. We do not use ``simpleeval``: its model is "evaluate anything, then
block dangerous attributes and functions"; a whitelist of a dozen node types is
smaller to audit, and compiling to closures once makes a match cost a few
microseconds instead of a tree walk per evaluation.
"""

from __future__ import annotations

import ast
import io
import logging
import operator
import threading
import tokenize
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from agata.errors import invalid

logger = logging.getLogger(__name__)

MAX_LENGTH: Final = 1000
"""Longest accepted expression, in characters."""
MAX_NODES: Final = 200
"""Most expression nodes (names, literals, operations) in one expression."""
MAX_DEPTH: Final = 32
"""Deepest nesting of expression nodes."""
MAX_ABS_NUMBER: Final = 10**18
"""Bound on the magnitude of numeric literals and of arithmetic operands and results."""

DEVICE_FIELDS: Final = frozenset(
    {"user_id", "data_qnt", "avg_acc_contrib", "avg_disconnection_per_round", "sensors"}
)
"""The device record's own fields; any other name is looked up in its ``extra``."""

_Fn = Callable[[Mapping[str, Any]], Any]

_MISSING: Final = object()
_NUMBER_TYPES: Final = frozenset({int, float, bool})
_SCALAR_TYPES: Final = frozenset({int, float, bool, str, type(None)})

_BINOPS: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}
_BINOP_SYMBOLS: Final[dict[type[ast.operator], str]] = {
    ast.Pow: "**",
    ast.FloorDiv: "//",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitAnd: "&",
    ast.BitXor: "^",
    ast.MatMult: "@",
}


def _contains(a: Any, b: Any) -> bool:
    return a in b


def _not_contains(a: Any, b: Any) -> bool:
    return a not in b


_CMPOPS: Final[dict[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: _contains,
    ast.NotIn: _not_contains,
}
_EQUALITY_OPS: Final = (ast.Eq, ast.NotEq, ast.Is, ast.IsNot)

_FORBIDDEN: Final[dict[type[ast.AST], str]] = {
    ast.Attribute: "attribute access is not allowed",
    ast.Call: "function calls are not allowed",
    ast.Subscript: "subscripts (indexing and slicing) are not allowed",
    ast.Slice: "subscripts (indexing and slicing) are not allowed",
    ast.Lambda: "lambda expressions are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.NamedExpr: "assignment expressions (:=) are not allowed",
    ast.Starred: "starred expressions are not allowed",
    ast.Dict: "dict literals are not allowed",
    ast.IfExp: "conditional expressions (a if c else b) are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
}


def _arith(op: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    """Apply a whitelisted arithmetic operator; None on any error or out of bounds."""
    if type(a) not in _NUMBER_TYPES or type(b) not in _NUMBER_TYPES:
        if a is not None and b is not None:
            logger.debug(
                "selection criteria: arithmetic on %s and %s gives None",
                type(a).__name__,
                type(b).__name__,
            )
        return None
    if not (-MAX_ABS_NUMBER <= a <= MAX_ABS_NUMBER and -MAX_ABS_NUMBER <= b <= MAX_ABS_NUMBER):
        return None
    try:
        result = op(a, b)
    except ArithmeticError:
        return None
    if not -MAX_ABS_NUMBER <= result <= MAX_ABS_NUMBER:  # also false for NaN
        return None
    return result


def _compare(op: Callable[[Any, Any], Any], a: Any, b: Any) -> bool:
    """Apply a whitelisted comparison; False on a None operand or on any error."""
    if a is None or b is None:
        return False
    try:
        return bool(op(a, b))
    except Exception as exc:  # a failed comparison is false by definition
        logger.debug(
            "selection criteria: comparing %s with %s is false: %s",
            type(a).__name__,
            type(b).__name__,
            exc,
        )
        return False


def _none_test(op: type[ast.cmpop]) -> Callable[[Any, Any], bool]:
    """``a == None`` and friends, where one side is the literal None."""
    if op in (ast.Eq, ast.Is):
        return lambda a, b: a is None and b is None
    return lambda a, b: not (a is None and b is None)


@dataclass(slots=True)
class _Compiled:
    fn: _Fn
    is_const: bool = False
    value: Any = None


def _const(value: Any) -> _Compiled:
    return _Compiled(lambda _d: value, True, value)


class _Compiler:
    """One pass over a parsed expression: validate every node and build closures."""

    def __init__(self, text: str, lead: int) -> None:
        self._lines = text.split("\n")
        self._lead = lead  # characters stripped from the start of the first line
        self.names: set[str] = set()

    def where(self, node: ast.AST) -> str:
        lineno = getattr(node, "lineno", 1)
        offset = getattr(node, "col_offset", 0)  # in UTF-8 bytes
        if isinstance(node, ast.Attribute) and node.end_col_offset is not None:
            # point at the attribute's name, not at the start of the object
            lineno = node.end_lineno or lineno
            offset = node.end_col_offset - len(node.attr.encode("utf-8"))
        line = self._lines[lineno - 1] if 0 < lineno <= len(self._lines) else ""
        column = len(line.encode("utf-8")[:offset].decode("utf-8", errors="ignore")) + 1
        if lineno == 1:
            column += self._lead
        if len(self._lines) > 1:
            return f"line {lineno}, column {column}"
        return f"column {column}"

    def fail(self, message: str, node: ast.AST) -> Exception:
        return invalid(f"selection criteria: {message} ({self.where(node)})")

    def compile(self, node: ast.AST, depth: int = 0) -> _Compiled:
        if depth > MAX_DEPTH:
            raise self.fail(f"expression is nested too deeply (more than {MAX_DEPTH} levels)", node)
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.BoolOp):
            return self._boolop(node, depth)
        if isinstance(node, ast.UnaryOp):
            return self._unaryop(node, depth)
        if isinstance(node, ast.BinOp):
            return self._binop(node, depth)
        if isinstance(node, ast.Compare):
            return self._comparison(node, depth)
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            return self._container(node, depth)
        message = _FORBIDDEN.get(type(node), f"{type(node).__name__} is not allowed")
        if isinstance(node, ast.Attribute):
            message = f"{message}: '.{node.attr}'"
        raise self.fail(message, node)

    def _constant(self, node: ast.Constant) -> _Compiled:
        value: Any = node.value
        if type(value) not in _SCALAR_TYPES:
            kind = "'...' is" if value is Ellipsis else f"{type(value).__name__} literals are"
            raise self.fail(f"{kind} not allowed", node)
        if type(value) in (int, float) and not -MAX_ABS_NUMBER <= value <= MAX_ABS_NUMBER:
            raise self.fail("number is too large (at most 1e18 in magnitude)", node)
        return _const(value)

    def _name(self, node: ast.Name) -> _Compiled:
        name = node.id  # already NFKC-normalised by the parser
        if name.startswith("_"):
            raise self.fail(f"names starting with '_' are not allowed: {name!r}", node)
        self.names.add(name)

        def lookup(device: Mapping[str, Any]) -> Any:
            value = device.get(name, _MISSING)
            if value is _MISSING:
                extra = device.get("extra")
                return extra.get(name) if isinstance(extra, Mapping) else None
            return value

        return _Compiled(lookup)

    def _boolop(self, node: ast.BoolOp, depth: int) -> _Compiled:
        fns = tuple(self.compile(value, depth + 1).fn for value in node.values)
        if isinstance(node.op, ast.And):

            def all_of(device: Mapping[str, Any]) -> Any:
                value: Any = True
                for fn in fns:
                    value = fn(device)
                    if not value:
                        return value
                return value

            return _Compiled(all_of)

        def any_of(device: Mapping[str, Any]) -> Any:
            value: Any = False
            for fn in fns:
                value = fn(device)
                if value:
                    return value
            return value

        return _Compiled(any_of)

    def _unaryop(self, node: ast.UnaryOp, depth: int) -> _Compiled:
        operand = self.compile(node.operand, depth + 1)
        fn = operand.fn
        if isinstance(node.op, ast.Not):
            if operand.is_const:
                return _const(not operand.value)
            return _Compiled(lambda d: not fn(d))
        if isinstance(node.op, ast.USub | ast.UAdd):
            op = operator.sub if isinstance(node.op, ast.USub) else operator.add
            if operand.is_const:
                return self._fold(op, _const(0), operand, node)
            return _Compiled(lambda d: _arith(op, 0, fn(d)))
        raise self.fail("'~' is not allowed", node)

    def _binop(self, node: ast.BinOp, depth: int) -> _Compiled:
        op = _BINOPS.get(type(node.op))
        if op is None:
            symbol = _BINOP_SYMBOLS.get(type(node.op), type(node.op).__name__)
            raise self.fail(f"operator '{symbol}' is not allowed", node)
        left = self.compile(node.left, depth + 1)
        right = self.compile(node.right, depth + 1)
        for side in (left, right):
            if side.is_const and type(side.value) not in _NUMBER_TYPES:
                raise self.fail("arithmetic is only allowed on numbers", node)
        if left.is_const and right.is_const:
            return self._fold(op, left, right, node)
        lf, rf = left.fn, right.fn
        return _Compiled(lambda d: _arith(op, lf(d), rf(d)))

    def _fold(
        self, op: Callable[[Any, Any], Any], left: _Compiled, right: _Compiled, node: ast.AST
    ) -> _Compiled:
        if type(left.value) not in _NUMBER_TYPES or type(right.value) not in _NUMBER_TYPES:
            raise self.fail("arithmetic is only allowed on numbers", node)
        value = _arith(op, left.value, right.value)
        if value is None:
            raise self.fail("arithmetic on literals divides by zero or is out of bounds", node)
        return _const(value)

    def _comparison(self, node: ast.Compare, depth: int) -> _Compiled:
        operands = [self.compile(node.left, depth + 1)]
        operands += [self.compile(c, depth + 1) for c in node.comparators]
        steps: list[tuple[Callable[[Any, Any], Any], bool]] = []  # (op, is a None test)
        for i, op_node in enumerate(node.ops):
            left, right = operands[i], operands[i + 1]
            literal_none = (left.is_const and left.value is None) or (
                right.is_const and right.value is None
            )
            op_type = type(op_node)
            if literal_none and op_type in _EQUALITY_OPS:
                steps.append((_none_test(op_type), True))
            elif op_type in (ast.Is, ast.IsNot):
                raise self.fail("'is' and 'is not' are only allowed with None; use == or !=", node)
            else:
                steps.append((_CMPOPS[op_type], False))
        fns = tuple(o.fn for o in operands)
        if len(steps) == 1:
            (op, none_test), lf, rf = steps[0], fns[0], fns[1]
            if none_test:
                return _Compiled(lambda d: op(lf(d), rf(d)))
            return _Compiled(lambda d: _compare(op, lf(d), rf(d)))
        chain = tuple(zip(steps, fns[1:], strict=True))
        first = fns[0]

        def compare_chain(device: Mapping[str, Any]) -> bool:
            a = first(device)
            for (op, none_test), fn in chain:
                b = fn(device)
                if not (op(a, b) if none_test else _compare(op, a, b)):
                    return False
                a = b
            return True

        return _Compiled(compare_chain)

    def _container(self, node: ast.List | ast.Tuple | ast.Set, depth: int) -> _Compiled:
        items = []
        for element in node.elts:
            item = self.compile(element, depth + 1)
            if not item.is_const or type(item.value) not in _SCALAR_TYPES:
                raise self.fail("lists, tuples and sets may only contain literals", element)
            items.append(item.value)
        if isinstance(node, ast.Set):
            return _const(frozenset(items))
        if isinstance(node, ast.Tuple):
            return _const(tuple(items))
        return _const(items)  # nothing in the language can mutate it


class Criteria:
    """A compiled selection expression; :meth:`matches` is cheap and never raises."""

    __slots__ = ("_fn", "names", "text")

    def __init__(self, text: str, fn: _Fn | None, names: frozenset[str]) -> None:
        self.text = text
        """The expression as given."""
        self.names = names
        """The names the expression reads from the device record."""
        self._fn = fn

    @property
    def matches_everything(self) -> bool:
        """True for the empty expression."""
        return self._fn is None

    def matches(self, device: Mapping[str, Any]) -> bool:
        """Whether ``device`` meets the criteria; False (never an error) if unsure."""
        if self._fn is None:
            return True
        try:
            return bool(self._fn(device))
        except Exception as exc:  # MUST never raise: treat as "does not match"
            logger.debug("selection criteria %r failed on a device: %s", self.text, exc)
            return False

    def __repr__(self) -> str:
        return f"Criteria({self.text!r})"


def _check_brackets(body: str) -> None:
    """Refuse brackets nested beyond MAX_DEPTH (they leave no node in the tree)."""
    depth = 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(body).readline):
            if token.type != tokenize.OP:
                continue
            if token.string in "([{":
                depth += 1
                if depth > MAX_DEPTH:
                    raise invalid(
                        "selection criteria: brackets are nested too deeply "
                        f"(more than {MAX_DEPTH} levels) (column {token.start[1] + 1})"
                    )
            elif token.string in ")]}":
                depth -= 1
    except (tokenize.TokenError, SyntaxError) as exc:
        raise invalid(f"selection criteria are not a valid expression: {exc}") from None


def compile_criteria(text: str | None) -> Criteria:
    """Parse and validate ``text``; raise ``INVALID_ARGUMENT`` saying what and where."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise invalid("selection criteria must be a string")
    if len(text) > MAX_LENGTH:
        raise invalid(
            f"selection criteria are too long ({len(text)} characters, at most {MAX_LENGTH})"
        )
    body = text.strip()
    if not body:
        return Criteria(text, None, frozenset())
    lead = len(text) - len(text.lstrip())
    try:
        tree = ast.parse(body, mode="eval")
    except SyntaxError as exc:
        where = f"column {(exc.offset or 1) + (lead if exc.lineno in (None, 1) else 0)}"
        if "\n" in body and exc.lineno:
            where = f"line {exc.lineno}, {where}"
        raise invalid(
            f"selection criteria are not a valid expression: {exc.msg} ({where})"
        ) from None
    except (ValueError, MemoryError, RecursionError, OverflowError) as exc:
        raise invalid(f"selection criteria are not a valid expression: {exc}") from None
    _check_brackets(body)
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.expr):
            count += 1
            if count > MAX_NODES:
                raise invalid(f"selection criteria are too complex (more than {MAX_NODES} terms)")
    compiler = _Compiler(body, lead)
    compiled = compiler.compile(tree.body)
    return Criteria(text, compiled.fn, frozenset(compiler.names))


def validate_criteria(text: str | None) -> None:
    """Raise ``INVALID_ARGUMENT`` if ``text`` is not acceptable selection criteria."""
    compile_criteria(text)


class CriteriaCache:
    """A small thread-safe LRU of compiled criteria, keyed by their text.

    The task manager asks it for every (task, device) pair, so each distinct
    expression is parsed once. Invalid expressions are not cached: they raise each time.
    """

    def __init__(self, maxsize: int = 256) -> None:
        if maxsize < 1:
            raise invalid("the criteria cache needs room for at least one entry")
        self._maxsize = maxsize
        self._entries: OrderedDict[str, Criteria] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str | None) -> Criteria:
        """The compiled form of ``text`` (compiling it on a miss)."""
        key = text or ""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        criteria = compile_criteria(key)  # outside the lock: may raise, may take a while
        with self._lock:
            self._entries[key] = criteria
            self._entries.move_to_end(key)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)
        return criteria

    def matches(self, text: str | None, device: Mapping[str, Any]) -> bool:
        """Shorthand for ``get(text).matches(device)``."""
        return self.get(text).matches(device)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
