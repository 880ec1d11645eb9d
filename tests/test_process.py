"""`python -m vpiska` as an operator runs it: configuration errors, start-up, clean shutdown."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio


@dataclasses.dataclass
class ServerProcess:
    """A `python -m vpiska` a test started, and everything it wrote to stdout and stderr."""

    process: trio.Process
    url: str = ""  # from its "serving" log line
    output: bytearray = dataclasses.field(default_factory=bytearray)
    ended: trio.Event = dataclasses.field(default_factory=trio.Event)  # its output is all read

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def text(self) -> str:
        return self.output.decode(errors="replace")

    async def exit_code(self) -> int:
        """Wait until the process has exited and all it wrote has been read."""
        code = await self.process.wait()
        await self.ended.wait()
        return code


def serving_url(line: bytes | bytearray) -> str | None:
    """The address in vpiska's "serving" log line, if `line` is that line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("event") != "serving":
        return None
    return str(record["binds"][0])


@asynccontextmanager
async def vpiska_process(tmp_path: Path, command: list[str] | None = None,
                         **settings: str) -> AsyncIterator[ServerProcess]:
    """Start `python -m vpiska` (or `command`) with `settings` and yield it once it serves.

    Its port is the kernel's choice (SERVER_PORT=0), read from its "serving" log line: a free
    port picked beforehand could be taken by another process before the server binds it, and
    the test would then talk to that process. Its output is read all along (a full pipe would
    stop it) into `output`.

    It is yielded once it has also answered a request: the server handles SIGTERM only from a
    moment after it logs "serving" (hypercorn starts the shutdown trigger, which installs the
    handler, after it reports its binds), and a SIGTERM in between kills it outright (-15).
    The request was served by tasks started after the trigger's, so the handler is in place.

    Resource handling: on the way out the process is killed unless it has exited, and waited
    for. Error handling: AssertionError, with its output, if it exits before serving.
    """
    process = await trio.lowlevel.open_process(
        command or [sys.executable, "-m", "vpiska"],
        env=env(tmp_path, **{"SERVER_PORT": "0", **settings}),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    served = ServerProcess(process)
    settled = trio.Event()  # serving, or gone

    async def read() -> None:
        assert process.stdout is not None
        scanned = 0
        async with process.stdout:
            async for chunk in process.stdout:
                served.output += chunk
                while not served.url and (end := served.output.find(b"\n", scanned)) >= 0:
                    served.url = serving_url(served.output[scanned:end]) or ""
                    scanned = end + 1
                if served.url:
                    settled.set()
        served.ended.set()
        settled.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)  # ends when the process has gone and its output is read
        try:
            with trio.fail_after(30):
                await settled.wait()
            if not served.url:
                raise AssertionError(f"vpiska exited ({await process.wait()}) before "
                                     f"serving:\n{served.text()}")
            async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
                assert (await http.get("/healthz")).status_code == 200
            yield served
        finally:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


def free_port() -> int:
    """A port that was free a moment ago. Racy: another process can take it before the program
    it is meant for binds it. vpiska binds port 0 and says which port it got (`vpiska_process`);
    this is only for programs that cannot tell (nginx, redis-server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until_serving(url: str) -> None:
    """Poll `url` until it answers, for at most 30 s. Only for a server whose port is known to
    be its own: polling a port picked beforehand can reach another process (`free_port`)."""
    async with httpx.AsyncClient() as client:
        with trio.fail_after(30):
            while True:
                try:
                    await client.get(f"{url}/api/v1/nothing")
                    return
                except httpx.TransportError:
                    await trio.sleep(0.05)


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATA_DIR": str(tmp_path / "data"), "SERVER_HOST": "127.0.0.1", **extra}


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
