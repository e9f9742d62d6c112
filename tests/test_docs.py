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


@pytest.mark.parametrize(
    "module", [gatedrnn.nn, gatedrnn.inspect, gatedrnn.cells.family, gatedrnn.config], ids=lambda m: m.__name__
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def _python_blocks(markdown: str) -> list[str]:
    """The ```python fenced blocks of a Markdown text."""
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_readme_quick_start_runs():
    """README's Python examples run as written (a renamed argument or attribute fails here)."""
    blocks = _python_blocks((Path(__file__).parents[1] / "README.md").read_text())
    assert blocks, "README.md has no ```python block"
    namespace: dict = {}
    before = set(gatedrnn.registered_families())
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)
    finally:  # the README's own families leave the registry as they found it
        for name in set(gatedrnn.registered_families()) - before:
            gatedrnn.unregister_family(name)
    assert namespace["trace"].gates[(0, 0)]["f"].shape == (12, 1, 20)
