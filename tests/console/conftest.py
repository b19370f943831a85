"""Streamlit's AppTest runs each script as the process's `__main__` and leaves it there. A
multiprocessing "spawn" child re-runs the parent's `__main__` file before anything else, so a later
test that starts a spawn pool in this process (serving's explainer, the trainer's study workers)
would have its workers run a console script, or die on a temporary one. Each test here gives the
real `__main__` back."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _keep_the_real_main_module() -> Iterator[None]:
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main
