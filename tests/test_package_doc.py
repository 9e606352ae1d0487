"""The package docstring's example is a doctest that runs (on the embedded SmolLM2, offline)."""
import doctest

import pytest

import smooth_then_quant

pytestmark = pytest.mark.slow


def test_package_docstring_example_runs():
    result = doctest.testmod(smooth_then_quant, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 10 and result.failed == 0
