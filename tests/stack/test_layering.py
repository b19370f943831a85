"""The library does not import its applications: the services and the rest of `cascade` (the shared
runtime, the contracts and the client layer) import neither the `cascade` command (cascade.cli) nor
the local stack launcher (cascade.stack) nor the web console (cascade.console); the launcher does
not import the command, and the console (an application like the command, which may read a local
stack's home) does not import the command either.

Read from the source with ast, so an import inside a function, which a test of the importing module
would only reach on that path, counts as well.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / "shared"  # the package cascade
SERVICES = REPO / "services"  # the package cascade.services
APPLICATIONS = ("cascade.cli", "cascade.stack", "cascade.console")


def _modules(root: Path, *, leave_out: tuple[Path, ...] = ()) -> list[Path]:
    return sorted(
        path
        for path in root.rglob("*.py")
        if "__pycache__" not in path.parts and not any(path.is_relative_to(folder) for folder in leave_out)
    )


def _package_of(path: Path) -> str:
    """The dotted package a module file lives in, as installed (shared/ is cascade)."""
    if path.is_relative_to(SERVICES):
        return ".".join(["cascade", "services", *path.parent.relative_to(SERVICES).parts])
    return ".".join(["cascade", *path.parent.relative_to(SHARED).parts])


def imported_names(source: str, package: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every module an import in `source`, a module of `package`, names;
    relative imports resolved."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # `from cascade import stack` imports cascade.stack as surely as `import cascade.stack`.
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def _is_within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def upward_imports(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in paths
        for line, name in imported_names(path.read_text(), _package_of(path))
        if _is_within(name, forbidden)
    ]


def test_the_services_import_neither_the_cli_nor_the_stack() -> None:
    modules = _modules(SERVICES)
    assert len(modules) > 20  # the walk did find the services
    assert upward_imports(modules, APPLICATIONS) == []


def test_the_library_imports_neither_the_cli_nor_the_stack() -> None:
    modules = _modules(SHARED, leave_out=(SHARED / "cli", SHARED / "stack", SHARED / "console"))
    assert SHARED / "client" / "calls.py" in modules and SHARED / "service.py" in modules
    assert upward_imports(modules, APPLICATIONS) == []


def test_the_launcher_does_not_import_the_cli() -> None:
    modules = _modules(SHARED / "stack")
    assert SHARED / "stack" / "launcher.py" in modules
    assert upward_imports(modules, ("cascade.cli",)) == []


@pytest.mark.parametrize(
    ("source", "package", "expected"),
    [
        ("from cascade.stack import Stack\n", "cascade.services.ingest", "cascade.stack"),
        ("import cascade.cli.main\n", "cascade", "cascade.cli.main"),
        ("from cascade import stack\n", "cascade", "cascade.stack"),
        ("def f():\n    from ..cli import client\n", "cascade.client", "cascade.cli.client"),
        ("from ...stack.launcher import Stack\n", "cascade.services.trainer", "cascade.stack.launcher"),
    ],
)
def test_every_form_of_an_upward_import_is_found(source: str, package: str, expected: str) -> None:
    """The walks above prove nothing unless they catch each way of writing such an import."""
    names = [name for _line, name in imported_names(source, package)]
    assert expected in names
    assert any(_is_within(name, APPLICATIONS) for name in names)


def test_imports_of_the_library_are_not_upward() -> None:
    names = [
        name for _line, name in imported_names("from cascade.client import calls\nimport grpc\n", "cascade")
    ]
    assert not any(_is_within(name, APPLICATIONS) for name in names)
    # A name that merely starts like an application is not one.
    assert not _is_within("cascade.stacked", APPLICATIONS)


def test_the_console_does_not_import_the_cli() -> None:
    modules = _modules(SHARED / "console")
    assert SHARED / "console" / "app.py" in modules
    assert upward_imports(modules, ("cascade.cli",)) == []
