"""tests/mutations.py stays true to the code: each break's text occurs exactly once where it points, and
each test it names exists (a refactor that moves the text would otherwise leave a break that never runs)."""

from __future__ import annotations

import pytest

from tests.helpers import code_objects
from tests.mutations import MUTATIONS, REPO


def _defined_tests(path) -> set[str]:
    return {code.co_name for code in code_objects(path) if code.co_name.startswith("test")}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_each_break_applies_once_and_names_tests_that_exist(mutation):
    assert (REPO / mutation.file).read_text(encoding="utf-8").count(mutation.old) == 1, mutation.file
    for test in mutation.tests:
        path, _, name = test.partition("::")
        assert (REPO / path).is_file(), test
        assert not name or name.split("[")[0] in _defined_tests(REPO / path), test


def test_break_names_are_unique():
    names = [mutation.name for mutation in MUTATIONS]
    assert len(names) == len(set(names))
