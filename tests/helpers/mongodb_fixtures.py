"""A real MongoDB wire server for the tests: SecantusDB (`secantusd-py`, the test extra's
`secantusdb`, WiredTiger underneath), started once per test session as a separate process on a
free port of 127.0.0.1, with its storage in the session's temporary folder.

SecantusDB is GPL-2.0, so it is only ever run as a process here; nothing imports it, and
`vpiska/` never knows it. Tests reach it through pymongo like any MongoDB: `mongodb_url` is its
`mongodb://` URL, and each test opens its own throwaway database on it (`new_database_name`)
and drops what it made.

`VPISKA_TEST_MONGODB_URL=mongodb://…` runs the same tests on another server instead (a real
mongod 7, say), and starts nothing.

Without `secantusd-py` a test that needs MongoDB is skipped with the reason; under CI (CI=true)
it fails: `make test` installs the test extra, so a missing server means a broken set-up.

Nothing here sleeps: the fixture waits for the server's own "listening" line, bounded by
START_SECONDS, then for its first answer to `ping`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from tests.helpers.executables import required

MONGODB_URL = "VPISKA_TEST_MONGODB_URL"
START_SECONDS = 60
_LISTENING = "secantus listening on"


def secantusd_executable() -> str:
    return required("secantusd-py", "the test extra's secantusdb: pip install -e .[test]",
                    "make test")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class SecantusServer:
    """One `secantusd-py --standalone` process and the lines it has written.

    `--config` names an empty file of its own, so no `secantusd.toml` of the developer's
    (SecantusDB looks in the working directory and the home folder) changes what the tests run.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.log: list[str] = []
        self._process: subprocess.Popen[str] | None = None
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start on a free port; return once it answers `ping`. RuntimeError with its log if
        it exits or does not listen within START_SECONDS."""
        executable = secantusd_executable()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "secantusd.toml"
        config.write_text("")
        for _ in range(5):  # another process may take the port between probe and bind
            self.port = _free_port()
            self._listening.clear()
            process = subprocess.Popen(
                [executable, "--config", str(config), "--standalone", "--host", "127.0.0.1",
                 "--port", str(self.port), "--storage-path", str(self.workdir / "data")],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, cwd=self.workdir)
            self._process = process
            self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
            self._reader.start()
            if not self._listening.wait(START_SECONDS):
                self.stop()
                raise RuntimeError(f"secantusd-py did not listen in {START_SECONDS} s:\n"
                                   f"{self._log_tail()}")
            if process.poll() is None:
                break
            if not any("in use" in line for line in self.log):
                raise RuntimeError(f"secantusd-py exited with {process.returncode}:\n"
                                   f"{self._log_tail()}")
        else:
            raise RuntimeError(f"secantusd-py found no free port:\n{self._log_tail()}")
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.url, serverSelectionTimeoutMS=START_SECONDS * 1000)
        try:
            client.admin.command("ping")
        finally:
            client.close()

    def stop(self) -> None:
        if self._process is None:
            return
        process, self._process = self._process, None
        process.terminate()
        try:
            process.wait(START_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(START_SECONDS)  # the pipe ends with the process
        assert process.stdout is not None
        process.stdout.close()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        # An exit before the "listening" line also ends the wait: start() then reads why.
        for line in process.stdout:
            self.log.append(line.rstrip("\n"))
            if _LISTENING in line:
                self._listening.set()
        self._listening.set()

    def _log_tail(self) -> str:
        return "\n".join(self.log[-30:])


@pytest.fixture(scope="session")
def mongodb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of the session's MongoDB wire server (or of VPISKA_TEST_MONGODB_URL's)."""
    given = os.environ.get(MONGODB_URL)
    if given:
        yield given
        return
    server = SecantusServer(tmp_path_factory.mktemp("secantusdb"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def new_database_name() -> str:
    """A database name no other test uses (tests share the session's server)."""
    return f"vpiska_test_{uuid.uuid4().hex}"


@dataclasses.dataclass(frozen=True)
class MongoDatabase:
    """A database of the session's server that no other test uses."""

    url: str
    name: str


@pytest.fixture
def mongodb_database(mongodb_url: str) -> Iterator[MongoDatabase]:
    """A throwaway database (`new_database_name`), dropped after the test."""
    database = MongoDatabase(mongodb_url, new_database_name())
    yield database
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongodb_url)
    try:
        client.drop_database(database.name)
    finally:
        client.close()
