"""The rule-condition language: what it computes, what it refuses, and that it never escapes."""

from __future__ import annotations

import contextlib
import re
from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.compliance.policy import EvalError, ExprError, PolicyError, compile_expr
from privacy.compliance.policy.expr import FUNCTIONS, MAX_SOURCE

TODAY = date(2026, 11, 24)
FACTS: dict[str, Any] = {
    "run.dp": True,
    "run.dp_delta": 1e-5,
    "run.aggregation": "Krum",
    "manifest.records": 1000,
    "manifest.licence": "CC-BY-NC-4.0",
    "manifest.jurisdictions": ["gdpr"],
    "manifest.source": None,
    "manifest.assessment_date": date(2026, 1, 1),
    "node.epsilon": None,
    "params.max_epsilon": 10.0,
    "params.robust": ["krum", "median"],
}


def ev(src: str) -> Any:
    return compile_expr(src, FACTS).evaluate(FACTS, TODAY)


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("run.dp and run.dp_delta < 1 / manifest.records", True),
        ("run.dp_delta >= 1 / manifest.records", False),
        ("manifest.records ** 1.1 > 1000", True),
        ("'gdpr' in manifest.jurisdictions and 'pipl' not in manifest.jurisdictions", True),
        ("lower(run.aggregation) in params.robust", True),
        ("startswith(manifest.licence, 'CC-BY-NC')", True),
        ("len(manifest.jurisdictions) == 1 and len(manifest.source) == 0", True),
        ("defined(manifest.source)", False),
        ("manifest.source is None", True),
        ("any([False, run.dp]) and not all([True, False])", True),
        ("max(1, 2, 3) - min(4, 5) == -1 and abs(-2) == 2", True),
        ("days_since(manifest.assessment_date)", 327),
        ("days_since('2026-01-01') == days_since(manifest.assessment_date)", True),
        ("days_since('2029-03-26') < 0", True),  # ISO text, as pack parameters hold dates
        ("1 if run.dp else 2", 1),
        ("7 // 2 + 7 % 2", 4),
        ("upper('x') + 'y'", "Xy"),
    ],
)
def test_evaluates(src: str, expected: Any) -> None:
    assert ev(src) == expected


def test_ordering_with_missing_fact_is_false_both_ways() -> None:
    assert ev("node.epsilon <= params.max_epsilon") is False
    assert ev("node.epsilon > params.max_epsilon") is False
    assert ev("days_since(manifest.source) <= 3") is False


def test_expression_names_are_the_facts_it_reads() -> None:
    expr = compile_expr("run.dp and node.epsilon <= params.max_epsilon", FACTS)
    assert expr.names == {"run.dp", "node.epsilon", "params.max_epsilon"}


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("node.epsilon + 1 > 2", "not declared"),
        ("manifest.licence > 3", "cannot order"),
        ("1 / 0", "division by zero"),
        ("10 ** 200", "power operands too large"),
        ("len(run.dp)", "len() needs"),
        ("3 in run.dp", "'in' needs a list"),
        ("'a' * 3", "needs numbers"),
        ("days_since('soon')", "needs a date like 2029-03-26"),
        ("days_since(3)", "needs a date"),
    ],
)
def test_runtime_errors_are_eval_errors(src: str, message: str) -> None:
    with pytest.raises(EvalError, match=re.escape(message)):
        ev(src)


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("__import__('os').system('true')", "not allowed"),
        ("().__class__.__bases__", "attribute access"),
        ("run.dp.__class__", "unknown name"),
        ("open('/etc/passwd')", "not allowed"),
        ("[x for x in params.robust]", "ListComp is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("params.robust[0]", "Subscript is not allowed"),
        ("(x := 1)", "NamedExpr is not allowed"),
        ("f'{run.dp}'", "JoinedStr is not allowed"),
        ("{'a': 1}", "Dict is not allowed"),
        ("run.dp is True", "'is' is only allowed"),
        ("len(*params.robust)", "positional arguments only"),
        ("len(1, 2)", "takes 1 argument"),
        ("len", "must be called"),
        ("manifest.licnce == 'x'", "did you mean manifest.licence"),
        ("secret == 1", "unknown name"),
        ("b'x'", "bytes is not allowed"),
        ("1e400 > 1", "non-finite"),
        ("'" + "a" * 600 + "'", "longer than"),
        ("run.dp and", "not valid syntax"),
        ("", "empty"),
        ("1 +" * 400 + "1", "longer than"),
        ("not " * 60 + "1", "nested deeper"),
        ("(" * 60 + "1" + ")" * 60, None),  # parentheses alone do not nest
        ("10 ** 30", None),
    ],
)
def test_refused_at_compile_time(src: str, message: str | None) -> None:
    if message is None:  # allowed to compile; only evaluation refuses it
        compile_expr(src, FACTS)
        return
    with pytest.raises(ExprError) as info:
        compile_expr(src, FACTS)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_non_string_condition_is_refused() -> None:
    with pytest.raises(ExprError, match="must be a string"):
        compile_expr(3, FACTS)


def test_without_known_names_any_fact_root_is_accepted() -> None:
    assert compile_expr("run.anything > 1").names == {"run.anything"}
    with pytest.raises(ExprError):
        compile_expr("os.system")


_atoms = st.sampled_from(
    sorted(FACTS) + sorted(FUNCTIONS) + ["1", "0", "-2.5", "'x'", "None", "True", "[1, 'a']",
                                          "__import__", "__class__", "()", "x"]
)
_ops = st.sampled_from(
    [" and ", " or ", " not ", " + ", " - ", " * ", " / ", " ** ", " < ", " == ", " in ",
     " not in ", " is ", "(", ")", ",", ".", "[", "]", " if ", " else ", " % ", " // "]
)


@settings(max_examples=500, deadline=None, database=None)
@given(st.lists(st.one_of(_atoms, _ops), min_size=1, max_size=25))
def test_random_token_soup_gives_a_value_or_a_policy_error(tokens: list[str]) -> None:
    src = "".join(tokens)
    try:
        expr = compile_expr(src, FACTS)
        expr.evaluate(FACTS, TODAY)
    except PolicyError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=MAX_SOURCE + 20))
def test_random_text_gives_a_value_or_a_policy_error(src: str) -> None:
    with contextlib.suppress(PolicyError):
        compile_expr(src, FACTS).evaluate(FACTS, TODAY)


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(), st.text(max_size=5),
    st.dates(), st.lists(st.integers(0, 3), max_size=3),
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.fixed_dictionaries({k: _values for k in FACTS}))
def test_shipped_style_conditions_on_random_facts_never_crash(facts: dict[str, Any]) -> None:
    for src in (
        "run.dp and run.dp_delta < 1 / manifest.records",
        "manifest.records ** 1.1 > params.max_epsilon",
        "lower(run.aggregation) in params.robust",
        "days_since(manifest.assessment_date) <= 1095 and defined(manifest.source)",
        "len(manifest.jurisdictions) > max(node.epsilon, 1)",
    ):
        with contextlib.suppress(EvalError):
            compile_expr(src, FACTS).evaluate(facts, TODAY)
