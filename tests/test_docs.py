"""The runnable examples in the public docstrings run and print what they claim."""

import doctest
import re
from pathlib import Path

import pytest

import gatedrnn
import gatedrnn.cells.family
import gatedrnn.config
import gatedrnn.inspect
import gatedrnn.nn

ROOT = Path(__file__).parents[1]
API_PAGE = ROOT / "docs" / "api.rst"
DOCTEST_MODULES = [gatedrnn.nn, gatedrnn.inspect, gatedrnn.cells.family, gatedrnn.config, gatedrnn.export]


@pytest.mark.parametrize("module", DOCTEST_MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    """The examples run, and those that register a family unregister it again."""
    before = gatedrnn.registered_families()
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
    assert gatedrnn.registered_families() == before


def _own_examples(name: str) -> list[doctest.Example]:
    """The doctest examples in the docstring of ``gatedrnn.<name>`` itself (not its members')."""
    tests = doctest.DocTestFinder().find(getattr(gatedrnn, name), name)
    return [example for test in tests if test.name == name for example in test.examples]


def _api_entries() -> dict[str, str]:
    """The API page's entries: the documented name -> the entry's text up to the next entry."""
    parts = re.split(r"^\.\. (?:auto\w+|py:\w+):: gatedrnn\.(\w+)\s*$", API_PAGE.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.mark.parametrize("name", gatedrnn.__all__)
def test_public_name_has_a_reference_entry_with_an_example(name):
    """Every public name has an entry on the site's API page and an example a doctest runs: in its
    own docstring (run by test_docstring_examples, whose modules must hold it), or, for a constant
    (which has no docstring of its own), in its entry on the API page (run by the test below)."""
    entries = _api_entries()
    assert name in entries, f"docs/api.rst has no entry for gatedrnn.{name}"
    if callable(getattr(gatedrnn, name)):
        assert _own_examples(name), f"gatedrnn.{name}'s docstring has no >>> example"
        assert getattr(gatedrnn, name).__module__ in {m.__name__ for m in DOCTEST_MODULES}
    else:
        assert ">>> " in entries[name], f"the API page's entry for gatedrnn.{name} has no >>> example"


def test_api_page_examples():
    result = doctest.testfile(str(API_PAGE), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def _python_blocks(markdown: str) -> list[str]:
    """The ```python fenced blocks of a Markdown text."""
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def _run_blocks(blocks: list[str], filename: str) -> dict:
    """Run Python blocks in one namespace; families they register are unregistered afterwards."""
    namespace: dict = {}
    before = set(gatedrnn.registered_families())
    try:
        for block in blocks:
            exec(compile(block, filename, "exec"), namespace)
    finally:
        for name in set(gatedrnn.registered_families()) - before:
            gatedrnn.unregister_family(name)
    return namespace


@pytest.mark.parametrize("page", sorted((ROOT / "docs" / "guides").glob("*.md")), ids=lambda p: p.name)
def test_guide_examples_run(page):
    """The guides' ```python blocks run as written (guides without code pass trivially)."""
    _run_blocks(_python_blocks(page.read_text()), page.name)


def test_readme_quick_start_runs():
    """README's Python examples run as written (a renamed argument or attribute fails here)."""
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert blocks, "README.md has no ```python block"
    namespace = _run_blocks(blocks, "README.md")
    assert namespace["trace"].gates[(0, 0)]["f"].shape == (12, 1, 20)
