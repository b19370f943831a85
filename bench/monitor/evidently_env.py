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

__all__ = ["PACKAGES", "VENV", "WORKER", "ensure", "ensure_venv"]

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "bench" / ".work" / "evidently-venv"
WORKER = Path(__file__).resolve().with_name("evidently_worker.py")
PACKAGES = ["evidently==0.7.23", "pandas<3"]


def ensure() -> Path:
    """The environment's python, creating the environment (once) if it is missing."""
    return ensure_venv(VENV, PACKAGES, "import evidently, pandas; assert pandas.__version__ < '3'")


def ensure_venv(path: Path, packages: list[str], check: str) -> Path:
    """The python of a venv at `path` holding `packages`, created once; `check` is Python code
    that must run in it before it counts as ready."""
    python, ready = path / "bin" / "python", path / ".cascade-ready"
    if ready.exists() and python.exists():
        return python
    path.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages],
        check=True,
    )
    subprocess.run([str(python), "-c", check], check=True)
    ready.write_text(" ".join(packages) + "\n")
    return python


if __name__ == "__main__":
    print(ensure())
    sys.exit(0)
