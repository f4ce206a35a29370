"""The READMEs and docs/ name only tests that exist, both languages name the same ones, and the reliability table
(docs/reliability.md) lists every test of the files it covers."""

import ast
import glob
import os
import re

import pytest

from tests.helpers import REPO


REFERENCE = re.compile(r"`(test_\w+\.py)::(test_\w+)(?:\[([\w-]+)\])?`")
FULLY_LISTED = ("test_data_validation.py", "test_crash_safety.py")  # every test there is a row of the table
GOOD_INPUT_TESTS = {"test_good_examples_are_cut_right_after_action", "test_label_column_can_be_renamed"}
DOCS = sorted(os.path.relpath(path, REPO) for path in glob.glob(os.path.join(REPO, "docs", "*.md")))
PAGES = ["README.md", "README_zh.md", *DOCS]


def _is_chinese(page: str) -> bool:
    return page.endswith("_zh.md")


def _references(page: str) -> set[tuple[str, str, str | None]]:
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
        return set(REFERENCE.findall(f.read()))


def _language_references(chinese: bool) -> set[tuple[str, str, str | None]]:
    return set().union(*(_references(page) for page in PAGES if _is_chinese(page) == chinese))


def _test_path(test_file: str) -> str:
    r"""The test file the docs name by basename, wherever under tests/ it lives (basenames are unique there)."""
    paths = glob.glob(os.path.join(REPO, "tests", "**", "test_*.py"), recursive=True)
    basenames = [os.path.basename(path) for path in paths]
    assert len(set(basenames)) == len(basenames), f"two test files share a name: {sorted(basenames)}"
    return next(
        (path for path in paths if os.path.basename(path) == test_file), os.path.join(REPO, "tests", test_file)
    )


def _test_functions(test_file: str) -> set[str]:
    with open(_test_path(test_file), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


@pytest.mark.parametrize("page", PAGES)
def test_every_named_test_exists(page):
    for test_file, name, case in _references(page):
        assert name in _test_functions(test_file), f"{page} names {test_file}::{name}, which does not exist"
        if case:
            with open(_test_path(test_file), encoding="utf-8") as f:
                assert f'"{case}"' in f.read(), f"{page} names the case {name}[{case}], which does not exist"


def test_every_docs_page_has_its_translation():
    english = {page for page in DOCS if not _is_chinese(page)}
    assert {page.removesuffix(".md") + "_zh.md" for page in english} == {page for page in DOCS if _is_chinese(page)}


def test_both_languages_name_the_same_tests_and_every_reliability_test():
    english, chinese = _language_references(False), _language_references(True)
    assert len(english) > 20
    assert english == chinese
    named = {(test_file, name) for test_file, name, _ in _references(os.path.join("docs", "reliability.md"))}
    for test_file in FULLY_LISTED:
        missing = {name for name in _test_functions(test_file) if (test_file, name) not in named}
        assert not missing - GOOD_INPUT_TESTS, (
            f"add a row to the reliability table (docs/reliability.md) for {test_file}: {sorted(missing)}"
        )
