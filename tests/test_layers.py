"""Dependencies point one way: domain ← store ← actors ← {http, cluster} ← server, so each
layer can be tested with fakes of the one below. The actor core stays free of the token and
password machinery (PyJWT, passlib): a room knows a member by its `Identity` alone. And the
transport stays below ASGI: only the composition root (vpiska/server.py) imports
vpiska.transport, the ASGI side knows only vpiska/sink.py, and the transport imports nothing of
vpiska's above it. The tests take what they share from tests/helpers/ alone: a test module
imports no other test module, nor conftest.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import vpiska

PACKAGE = Path(vpiska.__file__).parent
TESTS = Path(__file__).parent
# What each package may import of vpiska besides itself.
BELOW = {
    "store": ("vpiska.domain", "vpiska.errors", "vpiska.config", "vpiska.metrics"),
    "actors": ("vpiska.domain", "vpiska.errors", "vpiska.config", "vpiska.metrics",
               "vpiska.store", "vpiska.wire"),
}


def imported(path: Path) -> set[str]:
    """The vpiska modules `path` imports (`from vpiska import x` counts as vpiska.x)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("vpiska.")}


def modules(under: Path) -> list[Path]:
    return sorted(under.rglob("*.py"))


@pytest.mark.parametrize("package", sorted(BELOW))
def test_a_layer_imports_only_the_layers_below_it(package: str) -> None:
    allowed = (f"vpiska.{package}", *BELOW[package])
    wrong = {f"{path.relative_to(PACKAGE)}: {name}"
             for path in modules(PACKAGE / package)
             for name in imported(path) if not name.startswith(allowed)}
    assert not wrong


def test_the_actor_core_loads_neither_pyjwt_nor_passlib() -> None:
    probe = ("import sys, vpiska.actors, vpiska.actors.event, vpiska.actors.supervisor; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'jwt', 'passlib'}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=60).stdout.strip()
    assert loaded == "[]"


def test_only_the_composition_root_imports_the_transport() -> None:
    importers = {path.relative_to(PACKAGE).as_posix() for path in modules(PACKAGE)
                 if "transport" not in path.relative_to(PACKAGE).parts
                 and any(name.startswith("vpiska.transport") for name in imported(path))}
    assert importers == {"server.py"}


@pytest.mark.parametrize("path", modules(PACKAGE / "transport"), ids=lambda path: path.name)
def test_the_transport_imports_nothing_above_it(path: Path) -> None:
    allowed = ("vpiska.transport", "vpiska.sink", "vpiska.metrics")
    above = {name for name in imported(path) if not name.startswith(allowed)}
    assert not above, f"{path.name} imports {sorted(above)}"


def test_no_test_module_imports_another_or_conftest() -> None:
    """A helper borrowed from a test module ties that module's name and layout to every test
    that borrows it; shared code lives in tests/helpers/."""
    wrong: set[str] = set()
    for path in modules(TESTS):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            else:
                continue
            wrong.update(f"{path.relative_to(TESTS)}: {name}" for name in names
                         if name.startswith(("tests.test_", "tests.conftest", "."))
                         or name.split(".")[-1].startswith(("test_", "conftest")))
    assert not wrong
