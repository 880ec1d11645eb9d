"""The transport stays below ASGI: only the composition root (vpiska/server.py) imports
vpiska.transport, the ASGI side knows only vpiska/sink.py, and the transport imports nothing
of vpiska's above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vpiska

PACKAGE = Path(vpiska.__file__).parent


def imported(path: Path) -> set[str]:
    """The vpiska modules `path` imports (`from vpiska import x` counts as vpiska.x)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "vpiska" or name.startswith("vpiska.")}


def modules(under: Path) -> list[Path]:
    return sorted(under.rglob("*.py"))


def test_only_the_composition_root_imports_the_transport() -> None:
    importers = {path.relative_to(PACKAGE).as_posix() for path in modules(PACKAGE)
                 if "transport" not in path.relative_to(PACKAGE).parts
                 and any(name.startswith("vpiska.transport") for name in imported(path))}
    assert importers == {"server.py"}


@pytest.mark.parametrize("path", modules(PACKAGE / "transport"),
                         ids=lambda path: path.name)
def test_the_transport_imports_nothing_above_it(path: Path) -> None:
    allowed = ("vpiska.transport", "vpiska.sink", "vpiska.metrics")
    above = {name for name in imported(path)
             if not name.startswith(allowed) and name != "vpiska"}
    assert not above, f"{path.name} imports {sorted(above)}"
