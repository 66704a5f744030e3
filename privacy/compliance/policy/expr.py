"""A small, safe expression language for rule conditions.

Conditions are data in TOML packs, so they must never be able to run code. We parse them with
:mod:`ast` in ``eval`` mode and accept only a strict whitelist: literals, names from the facts
(dotted paths such as ``manifest.licence``, looked up in a dict, not Python attributes),
comparisons, ``and``/``or``/``not``, ``x if c else y``, arithmetic on numbers, list literals,
``in`` and a few functions (``len any all lower upper min max abs defined days_since
startswith``). Size and nesting are bounded, and evaluation never runs anything but this
interpreter.

Missing facts are ``None``. Ordering comparisons with ``None`` are false, so a check written
as *what must hold* (``node.epsilon <= params.max_epsilon``) fails when the fact is missing;
arithmetic on ``None`` raises :class:`EvalError`, which the engine reports as the rule not
being shown to hold.
"""

from __future__ import annotations

import ast
import difflib
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from privacy.compliance.policy.errors import EvalError, ExprError

__all__ = ["FUNCTIONS", "MAX_NODES", "MAX_SOURCE", "Expr", "compile_expr"]

MAX_SOURCE = 1000
MAX_NODES = 250
MAX_DEPTH = 40
MAX_STR = 500
MAX_INT = 10**18
ROOTS = ("manifest", "run", "node", "params")

_BOOL_OPS = (ast.And, ast.Or)
_BIN_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Mod, ast.Pow, ast.FloorDiv)
_CMP_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is,
            ast.IsNot)
_ORDER_OPS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _num(x: Any, what: str) -> float | int:
    if x is None:
        raise EvalError(f"{what} needs a number but a fact is not declared (None)")
    if not _is_num(x):
        raise EvalError(f"{what} needs numbers, got {type(x).__name__}")
    return x


def _f_len(x: Any) -> int:
    if x is None:
        return 0
    if isinstance(x, str | list | tuple):
        return len(x)
    raise EvalError(f"len() needs a string or list, got {type(x).__name__}")


def _f_seq(name: str, fn: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def call(x: Any) -> bool:
        if x is None:
            x = []
        if not isinstance(x, list | tuple):
            raise EvalError(f"{name}() needs a list, got {type(x).__name__}")
        return fn(x)

    return call


def _f_case(name: str, upper: bool) -> Callable[[Any], Any]:
    def call(x: Any) -> Any:
        if x is None:
            return None
        if not isinstance(x, str):
            raise EvalError(f"{name}() needs a string, got {type(x).__name__}")
        return x.upper() if upper else x.lower()

    return call


def _f_minmax(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        return fn(_num(a, f"{name}()") for a in args)

    return call


def _f_defined(x: Any) -> bool:
    return x is not None and x != "" and x != []


def _f_startswith(s: Any, prefix: Any) -> bool:
    if s is None:
        return False
    if not isinstance(s, str) or not isinstance(prefix, str):
        raise EvalError("startswith() needs two strings")
    return s.startswith(prefix)


#: name -> (min args, max args). days_since is bound to the evaluation date at run time.
FUNCTIONS: dict[str, tuple[int, int]] = {
    "len": (1, 1), "any": (1, 1), "all": (1, 1), "lower": (1, 1), "upper": (1, 1),
    "min": (2, 8), "max": (2, 8), "abs": (1, 1), "defined": (1, 1), "days_since": (1, 1),
    "startswith": (2, 2),
}
_IMPL: dict[str, Callable[..., Any]] = {
    "len": _f_len,
    "any": _f_seq("any", lambda xs: any(bool(v) for v in xs)),
    "all": _f_seq("all", lambda xs: all(bool(v) for v in xs)),
    "lower": _f_case("lower", upper=False),
    "upper": _f_case("upper", upper=True),
    "min": _f_minmax("min", min),
    "max": _f_minmax("max", max),
    "abs": lambda x: abs(_num(x, "abs()")),
    "defined": _f_defined,
    "startswith": _f_startswith,
}


def _dotted(node: ast.AST) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class _Validator:
    def __init__(self, source: str, names: Collection[str] | None) -> None:
        self.source = source
        self.known = names
        self.used: set[str] = set()

    def fail(self, problem: str) -> ExprError:
        shown = self.source if len(self.source) <= 80 else self.source[:77] + "..."
        return ExprError(f"condition {shown!r}: {problem}")

    def check(self, node: ast.AST, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH} levels; simplify it")
        nxt = depth + 1
        if isinstance(node, ast.Expression):
            self.check(node.body, nxt)
        elif isinstance(node, ast.Constant):
            self.constant(node.value)
        elif isinstance(node, ast.Attribute | ast.Name):
            self.name(node)
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, _BOOL_OPS):
            for v in node.values:
                self.check(v, nxt)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub | ast.UAdd):
            self.check(node.operand, nxt)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, _BIN_OPS):
            self.check(node.left, nxt)
            self.check(node.right, nxt)
        elif isinstance(node, ast.Compare):
            self.compare(node, nxt)
        elif isinstance(node, ast.IfExp):
            for part in (node.test, node.body, node.orelse):
                self.check(part, nxt)
        elif isinstance(node, ast.List | ast.Tuple):
            for elt in node.elts:
                if isinstance(elt, ast.Starred):
                    raise self.fail("* unpacking is not allowed")
                self.check(elt, nxt)
        elif isinstance(node, ast.Call):
            self.call(node, nxt)
        else:
            raise self.fail(
                f"{type(node).__name__} is not allowed; use comparisons, and/or/not, arithmetic, "
                f"lists, names and the functions {', '.join(FUNCTIONS)}"
            )

    def constant(self, value: Any) -> None:
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, int) and abs(value) > MAX_INT:
            raise self.fail(f"integer literal larger than {MAX_INT}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail("non-finite number literal")
        if isinstance(value, str) and len(value) > MAX_STR:
            raise self.fail(f"string literal longer than {MAX_STR} characters")
        if not isinstance(value, int | float | str):
            raise self.fail(f"literal of type {type(value).__name__} is not allowed")

    def name(self, node: ast.AST) -> None:
        dotted = _dotted(node)
        if dotted is None:
            raise self.fail("attribute access is only allowed on fact names like manifest.licence")
        if dotted in FUNCTIONS:
            raise self.fail(f"function {dotted} must be called, e.g. {dotted}(x)")
        if self.known is not None and dotted not in self.known:
            close = difflib.get_close_matches(dotted, list(self.known), n=1)
            hint = f"did you mean {close[0]}?" if close else f"names start with {'/'.join(ROOTS)}"
            raise self.fail(f"unknown name {dotted!r}; {hint}")
        if self.known is None and dotted.split(".", 1)[0] not in ROOTS:
            raise self.fail(f"unknown name {dotted!r}; names start with {'/'.join(ROOTS)}")
        self.used.add(dotted)

    def compare(self, node: ast.Compare, depth: int) -> None:
        self.check(node.left, depth)
        for op, right in zip(node.ops, node.comparators, strict=True):
            if not isinstance(op, _CMP_OPS):
                raise self.fail(f"operator {type(op).__name__} is not allowed")
            if isinstance(op, ast.Is | ast.IsNot) and not (
                isinstance(right, ast.Constant) and right.value is None
            ):
                raise self.fail("'is' is only allowed as 'is None' / 'is not None'; use ==")
            self.check(right, depth)

    def call(self, node: ast.Call, depth: int) -> None:
        fname = node.func.id if isinstance(node.func, ast.Name) else None
        if fname not in FUNCTIONS:
            raise self.fail(
                f"call to {ast.unparse(node.func)[:40]!r} is not allowed; functions: "
                f"{', '.join(FUNCTIONS)}"
            )
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail(f"{fname}() takes plain positional arguments only")
        lo, hi = FUNCTIONS[fname]
        if not lo <= len(node.args) <= hi:
            want = str(lo) if lo == hi else f"{lo}-{hi}"
            raise self.fail(f"{fname}() takes {want} argument(s), got {len(node.args)}")
        for arg in node.args:
            self.check(arg, depth)


@dataclass(frozen=True)
class Expr:
    """A validated condition; ``names`` are the facts it reads (reported as evidence)."""

    source: str
    tree: ast.Expression
    names: frozenset[str]

    def evaluate(self, facts: Mapping[str, Any], today: date) -> Any:
        """Evaluate on a flat ``{"manifest.licence": ...}`` mapping; EvalError on type errors."""
        try:
            return _Eval(facts, today).run(self.tree.body)
        except EvalError:
            raise
        except (ArithmeticError, ValueError, TypeError, RecursionError, MemoryError) as exc:
            raise EvalError(f"{type(exc).__name__}: {exc}") from None


def compile_expr(source: Any, names: Collection[str] | None = None) -> Expr:
    """Parse and validate `source`; `names` (if given) is the full set of allowed fact names."""
    if not isinstance(source, str):
        raise ExprError(f"condition must be a string, not {type(source).__name__}")
    if not source.strip():
        raise ExprError("condition is empty; write e.g. 'run.dp' or 'True'")
    if len(source) > MAX_SOURCE:
        raise ExprError(f"condition is longer than {MAX_SOURCE} characters; split the rule")
    source = " ".join(source.split("\n")).replace("\r", " ").strip()  # TOML multi-line strings
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"condition {source[:80]!r} is not valid syntax ({exc.msg})") from None
    except (ValueError, RecursionError, MemoryError):
        raise ExprError(f"condition {source[:80]!r} cannot be parsed; simplify it") from None
    count = sum(1 for _ in ast.walk(tree))
    if count > MAX_NODES:
        raise ExprError(f"condition has {count} parts (max {MAX_NODES}); split the rule")
    validator = _Validator(source, names)
    validator.check(tree)
    return Expr(source, tree, frozenset(validator.used))


class _Eval:
    def __init__(self, facts: Mapping[str, Any], today: date) -> None:
        self.facts = facts
        self.today = today

    def run(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Attribute | ast.Name):
            dotted = _dotted(node)
            if dotted not in self.facts:
                raise EvalError(f"fact {dotted!r} is not available here")
            return self.facts[dotted]
        if isinstance(node, ast.BoolOp):
            result: Any = None
            for v in node.values:
                result = self.run(v)
                if isinstance(node.op, ast.And) and not result:
                    return result
                if isinstance(node.op, ast.Or) and result:
                    return result
            return result
        if isinstance(node, ast.UnaryOp):
            value = self.run(node.operand)
            if isinstance(node.op, ast.Not):
                return not value
            value = _num(value, "unary minus")
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp):
            return self.binop(node.op, self.run(node.left), self.run(node.right))
        if isinstance(node, ast.Compare):
            left = self.run(node.left)
            for op, comp in zip(node.ops, node.comparators, strict=True):
                right = self.run(comp)
                if not self.compare(op, left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.run(node.body) if self.run(node.test) else self.run(node.orelse)
        if isinstance(node, ast.List | ast.Tuple):
            return [self.run(e) for e in node.elts]
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            args = [self.run(a) for a in node.args]
            if node.func.id == "days_since":
                return self.days_since(args[0])
            return _IMPL[node.func.id](*args)
        raise EvalError(f"{type(node).__name__} cannot be evaluated")

    def days_since(self, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, str):  # a pack parameter such as "2029-03-26"
            try:
                value = date.fromisoformat(value)
            except ValueError:
                raise EvalError(
                    f"days_since() needs a date like 2029-03-26, got {value!r}"
                ) from None
        if not isinstance(value, date):
            raise EvalError(f"days_since() needs a date, got {type(value).__name__}")
        return (self.today - value).days

    @staticmethod
    def binop(op: ast.operator, a: Any, b: Any) -> Any:
        if isinstance(op, ast.Add) and isinstance(a, str) and isinstance(b, str):
            return a + b
        if isinstance(op, ast.Add) and isinstance(a, list) and isinstance(b, list):
            return a + b
        x, y = _num(a, "arithmetic"), _num(b, "arithmetic")
        if isinstance(op, ast.Pow):
            if abs(y) > 100 or abs(x) > 1e12:
                raise EvalError("power operands too large (|base| <= 1e12, |exponent| <= 100)")
            result: Any = float(x) ** float(y)
        elif isinstance(op, ast.Add):
            result = x + y
        elif isinstance(op, ast.Sub):
            result = x - y
        elif isinstance(op, ast.Mult):
            result = x * y
        elif isinstance(op, ast.Div):
            if y == 0:
                raise EvalError("division by zero")
            result = x / y
        elif isinstance(op, ast.FloorDiv | ast.Mod):
            if y == 0:
                raise EvalError("division by zero")
            result = x // y if isinstance(op, ast.FloorDiv) else x % y
        else:
            raise EvalError(f"operator {type(op).__name__} is not allowed")
        if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(result)):
            raise EvalError("arithmetic result is not a finite real number")
        if isinstance(result, int) and abs(result) > 10**300:
            raise EvalError("arithmetic result is too large")
        return result

    @staticmethod
    def compare(op: ast.cmpop, a: Any, b: Any) -> bool:
        if isinstance(op, ast.Eq):
            return bool(a == b)
        if isinstance(op, ast.NotEq):
            return bool(a != b)
        if isinstance(op, ast.Is):
            return a is None
        if isinstance(op, ast.IsNot):
            return a is not None
        if isinstance(op, ast.In | ast.NotIn):
            if b is None:
                found = False
            elif isinstance(b, str):
                if not isinstance(a, str):
                    raise EvalError("'in' on a string needs a string on the left")
                found = a in b
            elif isinstance(b, list | tuple):
                found = a in b
            else:
                raise EvalError(f"'in' needs a list or string on the right, got {type(b).__name__}")
            return found if isinstance(op, ast.In) else not found
        if a is None or b is None:
            return False
        same = (_is_num(a) and _is_num(b)) or (
            type(a) is type(b) and isinstance(a, str | date)
        )
        if not same:
            raise EvalError(f"cannot order {type(a).__name__} against {type(b).__name__}")
        if isinstance(op, ast.Lt):
            return bool(a < b)
        if isinstance(op, ast.LtE):
            return bool(a <= b)
        if isinstance(op, ast.Gt):
            return bool(a > b)
        return bool(a >= b)
