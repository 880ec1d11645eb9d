"""Dependencies point one way: domain ← store ← actors ← {http, cluster} ← server, so each
layer can be tested with fakes of the one below. The actor core stays free of the token and
password machinery (PyJWT, passlib): a room knows a member by its `Identity` alone. And the
transport stays below ASGI: only the composition root (vpiska/server.py) imports
vpiska.transport, the ASGI side knows only vpiska/sink.py, and the transport imports nothing of
vpiska's above it. Within the actors, only a room's own task changes a Room; everyone else
sends it commands (docs/room-ownership.md). The tests take what they share from
tests/helpers/ alone: a test module imports no other test module, nor conftest.py."""

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
    "store": ("vpiska.domain", "vpiska.errors", "vpiska.config", "vpiska.metrics",
              "vpiska.loop_time"),
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


# Only the room's own task changes a Room (vpiska/actors/room.py): the room's module and its
# actor's change it freely; the supervisor runs the room's task between two incarnations and as
# it ends, and may call its ending methods; any other module only reads a room and sends it
# commands. A room is recognised by its name where it is used (`room`, `self._room`,
# `node.room`, `known_room`): the convention the code keeps, and the one this check relies on.
ROOM_MODULES = {"actors/room.py", "actors/event.py"}
ROOM_TASK_MODULES = {"actors/supervisor.py"}
# What another task may call on a room: each puts a command in its inbox, or only reads.
ROOM_MESSAGES = {"ask", "enter", "send", "leave", "offer", "stop"}
ROOM_ENDINGS = {"shut", "shut_failed", "shut_fenced"}
# Methods that change the collection or channel they are called on.
MUTATORS = {"add", "update", "append", "extend", "insert", "clear", "pop", "popitem",
            "discard", "remove", "setdefault", "send", "send_nowait", "receive",
            "receive_nowait", "close", "finish"}


def _is_room(node: ast.expr) -> bool:
    name = node.id if isinstance(node, ast.Name) else (
        node.attr if isinstance(node, ast.Attribute) else "")
    return name == "room" or name.endswith("_room")


def _room_path(node: ast.expr) -> list[str] | None:
    """For `room.a.b`, ["a", "b"]; None if `node` is not an attribute path from a room."""
    attributes: list[str] = []
    while isinstance(node, ast.Attribute):
        if _is_room(node.value):
            return [node.attr, *reversed(attributes)]
        attributes.append(node.attr)
        node = node.value
    return None


def room_writes(source: str, *, room_task: bool = False) -> list[str]:
    """Where `source` changes a room other than by sending it a command."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assign | ast.Delete | ast.AugAssign | ast.AnnAssign):
            targets: list[ast.expr] = []
        elif isinstance(node, ast.Assign | ast.Delete):
            targets = list(node.targets)
        else:
            targets = [node.target]
        while targets:
            target = targets.pop()
            if isinstance(target, ast.Tuple | ast.List):
                targets.extend(target.elts)
            elif isinstance(target, ast.Starred | ast.Subscript):
                targets.append(target.value)  # `room.members[user] =` changes room.members
            elif (path := _room_path(target)) is not None:
                found.append(f"line {target.lineno}: assigns room.{'.'.join(path)}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            path = _room_path(node.func)
            if path is None:
                continue
            allowed = ROOM_MESSAGES | (ROOM_ENDINGS if room_task else set())
            if (len(path) == 1 and path[0] not in allowed) or (
                    len(path) > 1 and (path[-1] in MUTATORS or path[0] in (
                        "commands", "publisher", "presence"))):
                found.append(f"line {node.lineno}: calls room.{'.'.join(path)}()")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and (
                _is_room(node.value)):
            found.append(f"line {node.lineno}: uses room.{node.attr}")
    return found


def test_only_the_room_s_task_changes_a_room() -> None:
    writes = {f"{path.relative_to(PACKAGE).as_posix()} {write}"
              for path in modules(PACKAGE)
              if path.relative_to(PACKAGE).as_posix() not in ROOM_MODULES
              for write in room_writes(path.read_text(), room_task=(
                  path.relative_to(PACKAGE).as_posix() in ROOM_TASK_MODULES))}
    assert not writes


@pytest.mark.parametrize(("source", "flagged"), [
    pytest.param("room.seq += 1", True, id="count"),
    pytest.param("self._room.failed = True", True, id="flag"),
    pytest.param("room.members[user] = set()", True, id="member-table"),
    pytest.param("room.banned.add(user)", True, id="ban"),
    pytest.param("room.add(member)", True, id="member"),
    pytest.param("room.broadcast(frame)", True, id="broadcast"),
    pytest.param("room.shut(code)", True, id="end"),
    pytest.param("room._inbox.send_nowait(command)", True, id="inbox"),
    pytest.param("room.commands.receive_nowait()", True, id="commands"),
    pytest.param("room.publisher.hello(room, 1, 0)", True, id="publisher"),
    pytest.param("known_room.presence.arrived(user)", True, id="presence"),
    pytest.param("room.offer(Join(member, None))", False, id="offer"),
    pytest.param("await room.ask(Snapshot)", False, id="ask"),
    pytest.param("room.leave(member)", False, id="leave"),
    pytest.param("sockets = room.members.get(user_id, ())", False, id="read"),
    pytest.param("count = self._room.users_count", False, id="count-read"),
    pytest.param("rooms[room.event_id] = room", False, id="keyed-by-room"),
    pytest.param("first, room.seq = 1, 2", True, id="unpacked"),
    pytest.param("gateway.banned.add(user)", False, id="not-a-room"),
])
def test_the_room_check_tells_a_change_from_a_message(source: str, flagged: bool) -> None:
    assert bool(room_writes(source)) is flagged


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
