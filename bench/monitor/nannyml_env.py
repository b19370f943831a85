"""The separate virtual environment NannyML runs in (`bench/.work/nannyml-venv`), created on first
use like Evidently's (see evidently_env.py). nannyml 0.13.1 imports statsmodels without declaring
it, so it is installed alongside.

Run directly (`python bench/monitor/nannyml_env.py`) it creates the environment and prints the
interpreter's path. Creation needs PyPI; a failure raises.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.monitor.evidently_env import ensure_venv

__all__ = ["PACKAGES", "VENV", "WORKER", "ensure"]

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "bench" / ".work" / "nannyml-venv"
WORKER = Path(__file__).resolve().with_name("nannyml_worker.py")
PACKAGES = ["nannyml==0.13.1", "statsmodels"]


def ensure() -> Path:
    """The environment's python, creating the environment (once) if it is missing."""
    return ensure_venv(VENV, PACKAGES, "import nannyml")


if __name__ == "__main__":
    print(ensure())
    sys.exit(0)
