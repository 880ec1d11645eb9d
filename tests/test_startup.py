"""Starting up as an operator sees it: where the server listens, and what a failed start says."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import trio

from tests.helpers.process import env
from vpiska.config import DEFAULT_JWT_KEY, Config


def test_with_the_public_default_key_the_server_listens_on_loopback_only() -> None:
    assert Config.from_env({}).host == "127.0.0.1"
    assert Config.from_env({"JWT_KEY": DEFAULT_JWT_KEY}).host == "127.0.0.1"


def test_with_a_key_of_its_own_the_server_listens_everywhere() -> None:
    assert Config.from_env({"JWT_KEY": "a key of our own, long enough for HS256"}).host == "0.0.0.0"


def test_server_host_is_what_the_operator_says() -> None:
    assert Config.from_env({"SERVER_HOST": "0.0.0.0"}).host == "0.0.0.0"
    assert Config.from_env({"SERVER_HOST": "::1", "JWT_KEY": "k" * 32}).host == "::1"


async def test_a_port_in_use_is_one_json_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await trio.run_process(
            [sys.executable, "-m", "vpiska"], env=env(tmp_path, SERVER_PORT=str(port)),
            capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 2
    assert result.stderr == b""
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    failure = [line for line in lines if line["level"] == "error"]
    assert len(failure) == 1
    assert str(port) in failure[0]["event"]
    assert "in use" in failure[0]["event"]
    assert all("traceback" not in line for line in lines)
