"""`python -m vpiska` as an operator runs it: configuration errors, start-up, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATA_DIR": str(tmp_path / "data"), "SERVER_HOST": "127.0.0.1", **extra}


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SERVER_PORT", "five"), ("HASH_KEY", "not-hex"), ("DB_CONNECTION", "postgres://db/x"),
     ("LOGGING_TRACE_REQUESTS", "maybe"), ("JWT_LIFETIME_DAYS", "0")],
)
async def test_invalid_configuration_stops_with_one_line(
    tmp_path: Path, variable: str, value: str
) -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "vpiska"], env=env(tmp_path, **{variable: value}),
        capture_stdout=True, capture_stderr=True, check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], lines


async def wait_until_serving(url: str) -> None:
    async with httpx.AsyncClient() as client:
        with trio.fail_after(30):
            while True:
                try:
                    await client.get(f"{url}/api/v1/nothing")
                    return
                except httpx.TransportError:
                    await trio.sleep(0.05)


@pytest.mark.parametrize("adapter", ["true", "false"], ids=["adapted", "stock-hypercorn"])
async def test_idle_keep_alive_connection_is_closed(tmp_path: Path, adapter: str) -> None:
    """hypercorn 0.18 never closes an idle kept-alive HTTP connection (hypercorn_adapter.py)."""
    port = free_port()
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "vpiska"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=env(tmp_path, SERVER_PORT=str(port), HYPERCORN_ADAPTER=adapter))
    try:
        await wait_until_serving(f"http://127.0.0.1:{port}")
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /api/v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            with trio.move_on_after(8):  # hypercorn's keep_alive_timeout is 5 s
                while chunk := await stream.receive_some(65536):
                    received += chunk
            closed = bool(received) and not chunk
        assert closed is (adapter == "true")
    finally:
        process.kill()
        await process.wait()


async def test_sigterm_stops_cleanly_and_default_key_warns(tmp_path: Path) -> None:
    port = free_port()
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "vpiska"], env=env(tmp_path, SERVER_PORT=str(port)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        await wait_until_serving(f"http://127.0.0.1:{port}")
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            output = b""
            assert process.stdout is not None
            async for chunk in process.stdout:
                output += chunk
            assert await process.wait() == 0
    finally:
        process.kill()
    text = output.decode()
    assert "Traceback" not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert any(r["level"] == "warning" and "JWT_KEY" in r["event"] for r in records)
    assert records[-1]["event"] == "stopped"
