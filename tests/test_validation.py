"""Update validation: every way a reply can be unusable is caught with a one-line reason."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from server.rounds.validation import InvalidUpdate, check_update, rules_for

GLOBAL = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


def good() -> dict[str, np.ndarray]:
    return {"w": np.full((3, 2), 0.1, np.float32), "b": np.ones(2, np.float32)}


def test_a_good_update_passes_and_reports_its_norm() -> None:
    norm = check_update(rules_for(GLOBAL), GLOBAL, good(), 10)
    assert norm == pytest.approx(np.sqrt(6 * 0.01 + 2), rel=1e-6)


@pytest.mark.parametrize(
    ("mutate", "examples", "declared", "needle"),
    [
        (lambda u: u.pop("b"), 10, None, "missing ['b']"),
        (lambda u: u.update(extra=np.zeros(1, np.float32)), 10, None, "unexpected ['extra']"),
        (lambda u: u.update(w=np.zeros((2, 3), np.float32)), 10, None, "shape (2, 3)"),
        (lambda u: u.update(w=np.zeros((3, 2), np.float64)), 10, None, "dtype float64"),
        (lambda u: u["w"].__setitem__((0, 0), np.nan), 10, None, "NaN or infinite"),
        (lambda u: u["b"].__setitem__(0, np.inf), 10, None, "NaN or infinite"),
        (lambda u: None, 0, None, "positive count"),
        (lambda u: None, -3, None, "positive count"),
        (lambda u: None, float("nan"), None, "positive count"),
        (lambda u: None, "10", None, "not a number"),
        (lambda u: None, True, None, "not a number"),
        (lambda u: None, 500, 100, "manifest declares 100"),
        (lambda u: None, 2e9, None, "plausible maximum"),
    ],
)
def test_bad_updates_are_rejected_with_a_reason(mutate, examples, declared, needle) -> None:
    update = good()
    mutate(update)
    with pytest.raises(InvalidUpdate) as info:
        check_update(rules_for(GLOBAL), GLOBAL, update, examples, declared)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_norm_bound() -> None:
    rules = rules_for(GLOBAL, max_update_norm=1.0)
    with pytest.raises(InvalidUpdate, match="exceeds the bound 1"):
        check_update(rules, GLOBAL, good(), 10)
    small = {"w": np.full((3, 2), 0.01, np.float32), "b": np.zeros(2, np.float32)}
    assert check_update(rules, GLOBAL, small, 10) < 1.0


@settings(max_examples=200, deadline=None, database=None)
@given(
    w=hnp.arrays(hnp.floating_dtypes() | hnp.integer_dtypes(), hnp.array_shapes(max_dims=3)),
    examples=st.one_of(st.integers(), st.floats(allow_nan=True), st.text(), st.none()),
)
def test_fuzzed_updates_pass_or_fail_cleanly(w, examples) -> None:
    """Whatever a node sends, validation answers with a verdict, never another exception."""
    update = {"w": w, "b": np.zeros(2, np.float32)}
    with contextlib.suppress(InvalidUpdate):
        check_update(rules_for(GLOBAL, 5.0), GLOBAL, update, examples)
