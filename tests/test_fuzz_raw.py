"""Random and mutated bytes on raw sockets against a real `python -m vpiska`.

schemathesis (tests/test_fuzz.py) sends well-formed HTTP; this sends what no client library
would: valid requests to every route, then byte flips, truncation, duplication, injected
headers, huge, negative and garbage Content-Length, chunked bodies good and broken, several
requests in one packet; and WebSockets (a real handshake to an open event, with a real token)
followed by bad opcodes, lengths that lie, unmasked, fragmented and oversized frames, control
frames too long, invalid UTF-8 and close frames with bad codes. Many connections at once, for
FUZZ_RAW_SECONDS (`make fuzz` runs longer).

Afterwards the process must be alive and serve /healthz and a fresh room member, and every line
it logged must be one JSON object, none at level error and none with a traceback.

Seeded: the seed is printed, and FUZZ_SEED=<n> replays the same byte streams (their timing
against the server's scheduling differs from run to run).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.helpers.process import env, free_port, wait_until_serving
from tests.helpers.raw_ws import RawSocket
from vpiska.http.openapi import PATHS

FUZZ_RAW_SECONDS = float(os.environ.get("FUZZ_RAW_SECONDS", "10"))
FUZZ_SEED = os.environ.get("FUZZ_SEED")
WORKERS = 24  # connections open at once
CONNECTION_SECONDS = 3.0  # longest one fuzzing connection is kept before the client drops it
JWT_KEY = "a raw fuzzing key long enough for HS256!!"
WS_PATH = "/api/v1/websockets/event"
CHAT = b"chatMessage/"


class Target:
    """What the fuzzer knows of the running server: its port, two users and an open event."""

    def __init__(self, port: int, owner: str, guest: str, event_id: str, media_id: str) -> None:
        self.port = port
        self.owner = owner
        self.guest = guest
        self.event_id = event_id
        self.media_id = media_id
        # A third account, for users/delete: a mutation may splice a right password in.
        self.leaver = ""


async def test_raw_fuzzing_finds_no_fault(tmp_path: Path) -> None:
    seed = int(FUZZ_SEED) if FUZZ_SEED else random.SystemRandom().randrange(2**32)
    print(f"\nraw fuzzing: seed {seed} (FUZZ_SEED={seed} replays), {FUZZ_RAW_SECONDS} s")
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "vpiska"], stdout=log_file, stderr=subprocess.STDOUT,
            env=env(tmp_path, SERVER_PORT=str(port), JWT_KEY=JWT_KEY, LOG_LEVEL="DEBUG",
                    LOGGING_TRACE_REQUESTS="true", BODY_TIMEOUT_SECONDS="2",
                    WS_PING_SECONDS="1"))
        try:
            await wait_until_serving(f"http://127.0.0.1:{port}")
            target = await prepare(port)
            counts = await fuzz(target, seed, FUZZ_RAW_SECONDS)
            print(f"raw fuzzing: {counts['http']} HTTP and {counts['ws']} WebSocket connections")
            assert process.returncode is None, "the server process died"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                assert (await http.get("/healthz")).status_code == 200
            await assert_member_can_chat(target)
            await assert_v2_member_is_acknowledged(target)
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                await process.wait()
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert all(isinstance(record, dict) for record in records)
    faults = [r for r in records if (r["level"] in ("error", "critical") or "traceback" in r)
              and not known(r)]
    assert faults == [], f"seed {seed}"
    assert process.returncode == 0


# Faults the fuzzer finds outside the connection layer, reported to their owners and tolerated
# here until fixed, so that anything new still fails: the last line of the traceback, and why.
KNOWN_FAULTS: dict[str, str] = {}  # none left: a Host werkzeug cannot encode is a 400 now


def known(record: dict[str, Any]) -> bool:
    """The record's traceback ends in a KNOWN_FAULTS line (exception groups draw a frame of
    `|`, `+` and `-` around their tracebacks: it is skipped)."""
    lines = [line.strip(" |+-") for line in str(record.get("traceback", "")).splitlines()]
    raised = [line for line in lines if line]
    return bool(raised) and raised[-1] in KNOWN_FAULTS


async def prepare(port: int) -> Target:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        async def sign_up(name: str, phone: str) -> str:
            answer = await http.post("/api/v1/users/create", json={
                "name": name, "phone": phone, "password": "secret1",
                "confirmPassword": "secret1"})
            return str(answer.json()["result"]["accessToken"])

        owner = await sign_up("owner", "9000000001")
        guest = await sign_up("guest", "9000000002")
        event = await http.post("/api/v1/events/create", headers=bearer(owner), json={
            "name": "fuzz", "address": "here", "coordinates": {"x": 1, "y": 2}})
        media = await http.post("/api/v1/media", files={"file": ("a.png", b"\x89PNG", "image/png")})
        leaver = await sign_up("leaver", "9000000003")
    media_id = media.json()["result"]
    target = Target(port, owner, guest, event.json()["result"]["id"],
                    media_id if isinstance(media_id, str) else "")
    target.leaver = leaver
    return target


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def fuzz(target: Target, seed: int, seconds: float) -> dict[str, int]:
    counts = {"http": 0, "ws": 0}

    async def worker(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        while True:
            kind = "ws" if rng.random() < 0.4 else "http"
            session = ws_session if kind == "ws" else http_session
            with trio.move_on_after(CONNECTION_SECONDS):
                try:
                    await session(target, rng)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
                    pass  # the server closed or reset the connection: allowed
            counts[kind] += 1

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for number in range(WORKERS):
                nursery.start_soon(worker, number)
    return counts


# HTTP/1.1 ---------------------------------------------------------------------------------


def base_requests(target: Target) -> list[bytes]:
    """One valid request to every route of API.md (and the probes)."""
    event, media, none = target.event_id, target.media_id, "00000000-0000-4000-8000-000000000000"
    post_json: list[tuple[str, dict[str, Any], str | None]] = [
        ("/api/v1/users/create", {"name": "n", "phone": "9001112233", "password": "secret1",
                                  "confirmPassword": "secret1"}, None),
        ("/api/v1/users/login", {"phone": "9000000002", "password": "secret1"}, None),
        ("/api/v1/users/update", {"name": "guest2"}, target.guest),
        ("/api/v1/users/password/change", {"password": "secret1",
                                           "confirmPassword": "secret1"}, target.guest),
        ("/api/v1/events/create", {"name": "e", "address": "a",
                                   "coordinates": {"x": 1, "y": 2}}, target.guest),
        ("/api/v1/events/get", {"eventId": event}, None),
        ("/api/v1/events/members", {"eventId": event}, None),
        ("/api/v1/events/range", {"coordinates": {"x": 1, "y": 2}, "horizontalRange": 4,
                                  "verticalRange": 4}, None),
        ("/api/v1/events/update", {"eventId": event, "address": "b",
                                   "coordinates": {"x": 1, "y": 2}}, target.owner),
        ("/api/v1/events/media/remove", {"eventId": event, "mediaId": media}, target.owner),
        ("/api/v1/events/close", {"eventId": none}, target.owner),  # keeps the event open
        ("/api/v1/events/chat", {"eventId": event, "before": 3, "limit": 2}, None),
        ("/api/v1/events/chat/remove", {"eventId": event, "seq": 1}, target.owner),
        # Bans nobody who is there; deletes nobody unless a mutation finds the password.
        ("/api/v1/events/members/remove", {"eventId": event, "userId": none, "ban": True},
         target.owner),
        ("/api/v1/users/delete", {"password": "wrong-password"}, target.leaver),
    ]
    requests = [http_request("POST", path, json.dumps(body).encode(), token=token,
                             content_type="application/json") for path, body, token in post_json]
    for path, field, token, fields in [
        ("/api/v1/users/media/set", "image", target.guest, {}),
        ("/api/v1/events/media/add", "media", target.owner, {"eventId": event}),
        ("/api/v1/media", "file", None, {}),
    ]:
        body = multipart(field, fields)
        requests.append(http_request("POST", path, body, token=token,
                                     content_type="multipart/form-data; boundary=fuzz"))
    for path in ["/health", "/healthz", "/readyz", "/metrics", f"/api/v1/media/{media}",
                 f"/api/v1/media/metadata/{media}", WS_PATH, "/swagger/doc.json"]:
        requests.append(http_request("GET", path, b""))
    requests.append(http_request("DELETE", f"/api/v1/media/{none}", b""))
    return requests


def http_request(method: str, path: str, body: bytes, *, token: str | None = None,
                 content_type: str | None = None) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    if content_type:
        head.append(f"Content-Type: {content_type}")
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def multipart(field: str, fields: dict[str, str]) -> bytes:
    parts = [f'--fuzz\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
             .encode() for name, value in fields.items()]
    parts.append(f'--fuzz\r\nContent-Disposition: form-data; name="{field}"; filename="f.png"'
                 f"\r\nContent-Type: image/png\r\n\r\n".encode() + b"\x89PNG\r\n\x1a\n" * 4
                 + b"\r\n")
    return b"".join(parts) + b"--fuzz--\r\n"


INJECTED_HEADERS = [
    b"Content-Length: 99999999999999999999", b"Content-Length: -1", b"Content-Length: 1e3",
    b"Content-Length: 0x10", b"Content-Length: 5, 6", b"Content-Length: \xff",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: identity", b"Expect: 100-continue", b"Connection: close",
    b"Connection: Upgrade", b"Upgrade: websocket", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABk",
    b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Content-Type: application/json; charset=utf-8", b"Content-Type: multipart/form-data",
    b"X-Request-Id: " + b"x" * 300, b"Host: a\r\nHost: b", b" folded: continuation",
    b"Bad Header: space", b"\x00: nul", b"X: " + b"y" * 20000, b"Authorization: Bearer junk",
]


def chunked(body: bytes, rng: random.Random) -> bytes:
    """`body` in chunks, now and then broken: wrong sizes, extensions, trailers, no end."""
    out = b""
    while body:
        size = rng.randint(1, max(1, len(body)))
        piece, body = body[:size], body[size:]
        declared = size if rng.random() < 0.9 else rng.choice([size + 3, 0, size * 1000])
        ext = rng.choice([b"", b";ext=1", b";" + b"e" * 100])
        out += b"%x%s\r\n%s\r\n" % (declared, ext, piece)
    return out + rng.choice([b"0\r\n\r\n", b"0\r\nTrailer: x\r\n\r\n", b"", b"zz\r\n"])


def mutate_http(request: bytes, others: list[bytes], rng: random.Random) -> bytes:
    head, _, body = request.partition(b"\r\n\r\n")
    mutation = rng.randrange(9)
    if mutation == 0:  # header injection
        lines = head.split(b"\r\n")
        for _ in range(rng.randint(1, 3)):
            lines.insert(rng.randint(1, len(lines)), rng.choice(INJECTED_HEADERS))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body
    if mutation == 1:  # chunked body instead of Content-Length
        lines = [line for line in head.split(b"\r\n")
                 if not line.lower().startswith(b"content-length")]
        return (b"\r\n".join([*lines, b"Transfer-Encoding: chunked"]) + b"\r\n\r\n"
                + chunked(body or b"{}", rng))
    if mutation == 2:  # pipelining
        return request + b"".join(rng.choice(others) for _ in range(rng.randint(1, 3)))
    if mutation == 3:  # a Content-Length that lies
        lines = [line for line in head.split(b"\r\n")
                 if not line.lower().startswith(b"content-length")]
        length = rng.choice([b"-5", b"abc", b"1000000000000", b"", str(len(body) + 10).encode(),
                             str(max(0, len(body) - 3)).encode(), b"+4", b"4 4"])
        return b"\r\n".join([*lines, b"Content-Length: " + length]) + b"\r\n\r\n" + body
    data = bytearray(request or b"\r\n")
    if mutation == 4:  # byte flips
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif mutation == 5:  # truncation
        del data[rng.randrange(len(data)):]
    elif mutation == 6:  # duplication of a slice
        start = rng.randrange(len(data))
        end = min(len(data), start + rng.randint(1, 64))
        data[start:start] = data[start:end] * rng.randint(1, 20)
    elif mutation == 7:  # random bytes in between
        at = rng.randrange(len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 64))
    else:
        return rng.randbytes(rng.randint(1, 512))  # noise
    return bytes(data)


async def http_session(target: Target, rng: random.Random) -> None:
    requests = base_requests(target)
    payload = rng.choice(requests)
    for _ in range(rng.choice([0, 1, 1, 2])):
        payload = mutate_http(payload, requests, rng)
    stream = await trio.open_tcp_stream("127.0.0.1", target.port)
    async with stream:
        await send_in_pieces(stream, payload, rng)
        await read_some_then_leave(stream, rng)


async def send_in_pieces(stream: trio.SocketStream, data: bytes, rng: random.Random) -> None:
    """All of `data`, in one write or several (with the client's own short pauses)."""
    while data:
        size = len(data) if rng.random() < 0.6 else rng.randint(1, len(data))
        await stream.send_all(data[:size])
        data = data[size:]
        if data and rng.random() < 0.3:
            await trio.sleep(rng.random() * 0.01)  # the client's pace, not a wait for anything


async def read_some_then_leave(stream: trio.SocketStream, rng: random.Random) -> None:
    """Read until the server closes, or leave early (at once, or a little later)."""
    if rng.random() < 0.2:
        return
    with trio.move_on_after(rng.choice([0.05, 0.5, CONNECTION_SECONDS])):
        while await stream.receive_some(65536):
            pass


# WebSocket --------------------------------------------------------------------------------


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
          masked: bool = True, length: int | None = None) -> bytes:
    """A client frame, as wrong as asked: any opcode, RSV bits, no mask, a length that lies."""
    length = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | (opcode & 0x0F)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length & (2**64 - 1))
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def random_frame(rng: random.Random) -> bytes:
    kind = rng.randrange(15)
    text = CHAT + rng.choice([b"hi", b"", "привет".encode(), b"x" * rng.randint(1, 3000)])
    if kind == 0:
        return frame(rng.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), rng.randbytes(4))
    if kind == 1:  # a length that lies
        return frame(1, text, length=rng.choice([len(text) + 50, 126, 70000, 2**63 + 5]))[:200]
    if kind == 2:
        return frame(1, text, masked=False)
    if kind == 3:  # a fragmented message, valid or not
        parts = [frame(1, text[:5], fin=False), frame(0, text[5:10], fin=False)]
        parts.append(frame(rng.choice([0, 1, 2]), text[10:]))
        if rng.random() < 0.5:
            parts.insert(1, frame(9, b"in between"))
        return b"".join(parts)
    if kind == 4:
        return frame(0, b"orphan continuation")
    if kind == 5:  # control frames too long, or fragmented
        return frame(rng.choice([8, 9, 10]), b"p" * 126, fin=rng.random() < 0.5)
    if kind == 6:
        return frame(1, CHAT + b"\xff\xfe\xc3\x28" + rng.randbytes(8))
    if kind == 7:  # close frames with bad codes and reasons
        code = rng.choice([0, 999, 1004, 1005, 1006, 1015, 2999, 3000, 4999, 5000, 65535])
        reason = rng.choice([b"", b"bye", b"\xff\xfe"])
        return frame(8, struct.pack("!H", code) + reason if rng.random() < 0.9 else b"\x03")
    if kind == 8:
        return frame(1, text, rsv=rng.randint(1, 7))
    if kind == 9:
        return frame(rng.choice([9, 10]), rng.randbytes(rng.randint(0, 125)))
    if kind == 10:
        return frame(2, rng.randbytes(rng.randint(0, 100)))
    if kind == 11:  # oversized: only the header, then a little payload
        return frame(1, b"", length=rng.choice([65537, 10_000_000])) + b"a" * 100
    if kind == 12:
        return rng.randbytes(rng.randint(1, 64))
    if kind == 13:  # a v2 line with an id, well formed or not (a v1 socket ignores it)
        return frame(1, b"chat/" + rng.choice(SENT_LINES))
    return frame(1, text)  # a valid chat line


# Bodies of `chat/` frames (API.md, "Acknowledged sending"): one valid, then malformed ones.
SENT_LINES = [b'{"id":"f1","text":"hi"}', b'{"id":"f1","text":""}', b"{}", b"[]", b"null",
              b'{"id":1,"text":"a"}', b'{"id":"' + b"i" * 65 + b'","text":"a"}',
              b'{"id":"a","text":' + b"9" * 5000 + b"}", b"[" * 5000, b'{"id":"\\ud800"}',
              b'{"id":"b","text":"' + b"x" * 3000 + b'"}', b'{"id":"c","text":1e999}', b"\xff"]


async def ws_session(target: Target, rng: random.Random) -> None:
    token = rng.choice([target.guest, target.owner, "junk"])
    query = f"accessToken={token}&eventId={target.event_id}"
    if rng.random() < 0.2:
        query += rng.choice(["&since=0", "&since=-1", "&since=99999999999", "&since=x"])
    if rng.random() < 0.4:  # v2 sockets get presence frames and acks (and storms of them)
        query += rng.choice(["&v=2", "&v=2", "&v=1", "&v=3"])
    handshake = (f"GET {WS_PATH}?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n").encode()
    if rng.random() < 0.2:
        handshake += rng.choice(INJECTED_HEADERS) + b"\r\n"
    handshake += b"\r\n"
    if rng.random() < 0.1:
        handshake = mutate_http(handshake, [handshake], rng)
    frames = b"".join(random_frame(rng) for _ in range(rng.randint(1, 12)))
    stream = await trio.open_tcp_stream("127.0.0.1", target.port)
    async with stream:
        if rng.random() < 0.3:  # the first frames in the handshake's packet
            await send_in_pieces(stream, handshake + frames, rng)
        else:
            await stream.send_all(handshake)
            if rng.random() < 0.7:
                await stream.receive_some(65536)  # the answer, or its start
            await send_in_pieces(stream, frames, rng)
        await read_some_then_leave(stream, rng)


# What must hold afterwards ------------------------------------------------------------------


async def assert_member_can_chat(target: Target) -> None:
    raw = await RawSocket.connect(target.port, f"{WS_PATH}?accessToken={target.guest}"
                                               f"&eventId={target.event_id}")
    async with raw.stream:
        await raw.send_frame(0x1, CHAT + b"after the fuzzing")
        with trio.fail_after(15):
            while True:
                opcode, payload = await raw.next_frame()
                if opcode == 0x9:  # the server's ping (WS_PING_SECONDS=1): answer it
                    await raw.send_frame(0xA, payload)
                elif opcode == 0x1 and payload.startswith(CHAT):
                    assert json.loads(payload[len(CHAT):])["message"] == "after the fuzzing"
                    return


async def assert_v2_member_is_acknowledged(target: Target) -> None:
    raw = await RawSocket.connect(target.port, f"{WS_PATH}?accessToken={target.guest}"
                                               f"&eventId={target.event_id}&v=2")
    async with raw.stream:
        await raw.send_frame(0x1, b'chat/{"id":"after-fuzzing","text":"acknowledged"}')
        with trio.fail_after(15):
            while True:
                opcode, payload = await raw.next_frame()
                if opcode == 0x9:
                    await raw.send_frame(0xA, payload)
                elif opcode == 0x1 and payload.startswith(b"ack/"):
                    assert json.loads(payload[4:])["id"] == "after-fuzzing"
                    return


def test_every_route_is_fuzzed() -> None:
    """A route added to the document gets a base request here, or this fails."""
    sent = [request.split(b" ", 2)[1].split(b"?")[0].decode()
            for request in base_requests(Target(1, "owner", "guest", "event", "media"))]
    templates = {path: re.compile(re.sub(r"\{[^}]+\}", "[^/]+", path)) for path in PATHS}
    assert [path for path, template in templates.items()
            if not any(template.fullmatch(target) for target in sent)] == []
