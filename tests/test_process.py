"""`python -m vpiska` as an operator runs it: configuration errors, start-up, clean shutdown."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import trio

from tests.helpers.process import env, vpiska_process


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SERVER_PORT", "five"), ("HASH_KEY", "not-hex"), ("DB_CONNECTION", "postgres://db/x"),
     ("LOGGING_TRACE_REQUESTS", "maybe"), ("JWT_LIFETIME_DAYS", "0"),
     ("MEDIA_STORE", "gridfs"), ("MEDIA_STORE", "s3")],
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
    assert len(lines) == 1, lines
    assert variable in lines[0], lines


@pytest.mark.parametrize("adapter", ["true", "false"], ids=["adapted", "stock-hypercorn"])
async def test_idle_keep_alive_connection_is_closed(tmp_path: Path, adapter: str) -> None:
    """hypercorn 0.18 never closes an idle kept-alive HTTP connection (docs/transport.md).

    How long "idle" has lasted is read off the server's clock: a connection opened once the
    first one went idle, and never used, is closed by the same keep-alive timer (hypercorn
    starts it for every new connection), so once it is closed the first one has been idle for
    longer than keep_alive_timeout too."""
    async with vpiska_process(tmp_path, HYPERCORN_ADAPTER=adapter) as served:
        used = await trio.open_tcp_stream("127.0.0.1", served.port)
        async with used:
            await used.send_all(b"GET /api/v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_response(used)
            unused = await trio.open_tcp_stream("127.0.0.1", served.port)
            async with unused:
                with trio.fail_after(5 + 30):  # hypercorn's keep_alive_timeout is 5 s
                    assert await unused.receive_some(65536) == b""
            if adapter == "true":  # closed after its own keep-alive timeout, which came first
                with trio.fail_after(30):
                    assert await used.receive_some(65536) == b""
            else:  # still open, and still served
                await used.send_all(b"GET /api/v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await read_response(used)).startswith(b"HTTP/1.1 404 ")


async def read_response(stream: trio.SocketStream) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length body."""
    received = b""
    with trio.fail_after(30):
        while b"\r\n\r\n" not in received:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed mid-response: {received!r}"
            received += chunk
        head, body = received.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed mid-body: {received!r}"
            body += chunk
    assert len(body) == length, "more than one response"
    return head + b"\r\n\r\n" + body


async def test_sigterm_stops_cleanly_and_default_key_warns(tmp_path: Path) -> None:
    async with vpiska_process(tmp_path) as served:
        served.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await served.exit_code() == 0
    text = served.text()
    assert "Traceback" not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert any(r["level"] == "warning" and "JWT_KEY" in r["event"] for r in records)
    assert records[-1]["event"] == "stopped"
