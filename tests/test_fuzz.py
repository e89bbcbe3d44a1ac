"""Fuzzing parse and check in CI: a few hundred mutated example specs (the long run is
tests/fuzz_specs.py). The only acceptable outcomes: the spec checks, or SpecError with valid positions."""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_specs import check_one, examples, mutate

EXAMPLES = examples()


def test_the_examples_check():
    assert len(EXAMPLES) >= 4
    assert all(check_one(name, text) == "ok" for name, text in EXAMPLES)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(min_value=0, max_value=10**6), seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_mutated_specs_check_or_fail_with_positions(which, seed):
    name, text = EXAMPLES[which % len(EXAMPLES)]
    assert check_one(name, mutate(text, random.Random(seed))) in ("ok", "error")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_arbitrary_text_checks_or_fails_with_positions(text):
    assert check_one("random.spec", text) in ("ok", "error")
