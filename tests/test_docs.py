"""The runnable examples in the public docstrings run and print what they claim."""

import doctest

import pytest

import gatedrnn.inspect
import gatedrnn.nn


@pytest.mark.parametrize("module", [gatedrnn.nn, gatedrnn.inspect], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
