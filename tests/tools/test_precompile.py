"""tools/precompile.py: the modules it compiles after ``pip install --no-compile`` exist."""
from __future__ import annotations

import importlib.util

import pytest

from tools.precompile import ENTRY_MODULES, RUN_TIME_MODULES


@pytest.mark.parametrize("name", ENTRY_MODULES + RUN_TIME_MODULES)
def test_every_listed_module_is_importable(name):
    # a renamed or removed entry point would make `make venv` fail after the installation
    assert importlib.util.find_spec(name) is not None, name
