"""What an install of Cascade puts into site-packages: one top-level package, `cascade`.

shared/ installs as `cascade` and services/ as `cascade.services`; pyproject.toml lists the packages
because of that mapping, so a folder missing from the list would silently be left out of every
install (the strict editable one of `make setup` included) and fail only on a user's machine.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _setuptools() -> dict[str, object]:
    config: dict[str, object] = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config


def _packages_on_disk() -> set[str]:
    package_dir = _setuptools()["package-dir"]
    assert isinstance(package_dir, dict)
    found = set()
    for name, folder in package_dir.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            relative = init.parent.relative_to(root)
            found.add(".".join([name, *relative.parts]))
    return found


def test_every_package_folder_is_listed_and_every_listed_package_exists() -> None:
    listed = set(_setuptools()["packages"])  # type: ignore[call-overload]
    on_disk = _packages_on_disk()
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - on_disk == set(), "these listed packages have no folder with an __init__.py"


def test_the_only_top_level_name_installed_is_cascade() -> None:
    package_dir = _setuptools()["package-dir"]
    assert isinstance(package_dir, dict)
    top_level = {name.split(".")[0] for name in _setuptools()["packages"]}  # type: ignore[attr-defined]
    assert top_level == {"cascade"}
    assert {name.split(".")[0] for name in package_dir} == {"cascade"}
    # The generated stubs keep their proto packages (`cascade.registry.v1`, `inference`) but live
    # under cascade.stubs, so no `inference` module reaches site-packages.
    assert not any(name == "inference" or name.startswith("inference.") for name in _packages_on_disk())
