"""The README's reliability table stays in sync with the tests, in both languages."""

import ast
import os
import re

import pytest


TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
REFERENCE = re.compile(r"`(test_\w+\.py)::(test_\w+)(?:\[([\w-]+)\])?`")
FULLY_LISTED = ("test_data_validation.py", "test_crash_safety.py")  # every test there is a row of the table
GOOD_INPUT_TESTS = {"test_good_examples_are_cut_right_after_action", "test_label_column_can_be_renamed"}


def _references(readme: str) -> set[tuple[str, str, str | None]]:
    with open(os.path.join(REPO, readme), encoding="utf-8") as f:
        return set(REFERENCE.findall(f.read()))


def _test_functions(test_file: str) -> set[str]:
    with open(os.path.join(TESTS, test_file), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


@pytest.mark.parametrize("readme", ["README.md", "README_zh.md"])
def test_every_named_test_exists(readme):
    references = _references(readme)
    assert len(references) > 20
    for test_file, name, case in references:
        assert name in _test_functions(test_file), f"{readme} names {test_file}::{name}, which does not exist"
        if case:
            with open(os.path.join(TESTS, test_file), encoding="utf-8") as f:
                assert f'"{case}"' in f.read(), f"{readme} names the case {name}[{case}], which does not exist"


def test_both_readmes_name_the_same_tests_and_every_reliability_test():
    english, chinese = _references("README.md"), _references("README_zh.md")
    assert english == chinese
    named = {(test_file, name) for test_file, name, _ in english}
    for test_file in FULLY_LISTED:
        missing = {name for name in _test_functions(test_file) if (test_file, name) not in named}
        assert not missing - GOOD_INPUT_TESTS, (
            f"add a row to the README's reliability table for {test_file}: {sorted(missing)}"
        )
