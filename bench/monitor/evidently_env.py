"""The separate virtual environment Evidently runs in, created on first use.

evidently 0.7.23 does not import under pandas 3, which the project uses, so it never enters the
project's venv: it lives in `bench/.work/evidently-venv` with `pandas<3`. Both the benchmark and the
parity test (tests/monitor/test_evidently_parity.py) call `ensure()` and then run
`evidently_worker.py` with the returned interpreter.

Run directly (`python bench/monitor/evidently_env.py`) it creates the environment and prints the
interpreter's path. Creation needs PyPI; a failure raises, it is never silently skipped.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

__all__ = ["PACKAGES", "VENV", "WORKER", "ensure"]

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "bench" / ".work" / "evidently-venv"
WORKER = Path(__file__).resolve().with_name("evidently_worker.py")
PACKAGES = ["evidently==0.7.23", "pandas<3"]
_READY = VENV / ".cascade-ready"


def ensure() -> Path:
    """The environment's python, creating the environment (once) if it is missing."""
    python = VENV / "bin" / "python"
    if _READY.exists() and python.exists():
        return python
    VENV.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PACKAGES],
        check=True,
    )
    subprocess.run(
        [str(python), "-c", "import evidently, pandas; assert pandas.__version__ < '3'"], check=True
    )
    _READY.write_text(" ".join(PACKAGES) + "\n")
    return python


if __name__ == "__main__":
    print(ensure())
    sys.exit(0)
