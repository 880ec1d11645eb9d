"""Test clients of the live room: trio-websocket members that record every frame they get."""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from tests.helpers.member_client import MemberClient
from tests.helpers.server import Server
from vpiska.auth import Tokens
from vpiska.domain import User, new_id

_phones = itertools.count(9100000000)


class Member(MemberClient):
    """A member over trio-websocket: a well-behaved client (it answers pings, closes cleanly)."""

    def __init__(self, ws: WebSocketConnection) -> None:
        super().__init__()
        self.ws = ws

    async def collect(self) -> None:
        close_code = None
        try:
            while True:
                frame = await self.ws.get_message()
                assert isinstance(frame, str), frame  # the protocol is text
                self._received(frame)
        except ConnectionClosed as closed:
            reason = closed.reason
            assert reason is not None  # trio-websocket has one once the connection closed
            close_code = reason.code
        finally:
            self._ended(close_code)

    async def send(self, frame: str) -> None:
        await self.ws.send_message(frame)


def socket_url(server: Server, token: str | None, event_id: str, **params: Any) -> str:
    fields = {"accessToken": token, "eventId": event_id, **params}
    query = "&".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    return f"{server.ws_url}/api/v1/websockets/event?{query}"


class Crowd:
    """The WebSocket clients of one test; `aclose` closes every one of them."""

    def __init__(self, nursery: trio.Nursery, server: Server) -> None:
        self._nursery = nursery
        self._server = server
        self.members: list[Member] = []
        self._streams: list[trio.SocketStream] = []

    async def join(self, token: str | None, event_id: str, *,
                   headers: dict[str, str] | None = None, **params: Any) -> Member:
        """Connect a member and return once the room has taken it in.

        The upgrade is answered before the room handles the join, so a member whose handshake
        is done may not be in the room yet: a line said or an update made right then could be
        missed by it. Its first frame (the state every joining socket gets, or with `since`
        the first line of its catch-up) is sent only after its join, so that is waited for.

        The TCP stream is opened here, not by trio-websocket, because after a server-initiated
        close trio-websocket never closes the stream itself."""
        url = urlsplit(socket_url(self._server, token, event_id, **params))
        assert url.hostname is not None
        assert url.port is not None
        stream = await trio.open_tcp_stream(url.hostname, url.port)
        try:
            ws = await wrap_client_stream(
                self._nursery, stream, url.hostname,
                f"{url.path}?{url.query}", message_queue_size=0,
                extra_headers=[(k.encode(), v.encode()) for k, v in (headers or {}).items()])
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        self._streams.append(stream)
        member = Member(ws)
        self.members.append(member)
        self._nursery.start_soon(member.collect)
        await member.wait_for(lambda m: bool(m.frames))
        return member

    async def aclose(self) -> None:
        """Drop every connection, as phones losing signal do. (A close handshake here would
        race the server's pings: trio-websocket then fails answering a ping while closing.)"""
        for stream in self._streams:
            await trio.aclose_forcefully(stream)


async def token_for(server: Server, name: str | None = None) -> tuple[str, str]:
    """(user id, token) of a user put straight into the server's store (argon2 is slow)."""
    user_id = new_id()
    user = User(user_id, name or f"guest-{user_id}", str(next(_phones)), "")
    await server.store.add_user(user)
    return user_id, Tokens(server.config).issue(user)


async def host_event(server: Server, name: str = "party", x: float = 10, y: float = 20
                     ) -> tuple[str, str]:
    """Sign up an owner and open an event: (owner token, event id)."""
    owner = await server.sign_up(f"host{next(_phones)}", str(next(_phones)))
    token = owner["accessToken"]
    event = await server.ok("/api/v1/events/create",
                            {"name": name, "address": "street 1", "coordinates": {"x": x, "y": y}},
                            token=token)
    return token, event["id"]


async def flood(member: Member, lines: int) -> None:
    """Say "spam 0", "spam 1", … up to `lines` lines without waiting for any; stops early
    once the server has closed the socket."""
    for i in range(lines):
        try:
            await member.say(f"spam {i}")
        except Exception:  # disconnected mid-flood
            break


async def connected_sockets(server: Server) -> int:
    """`vpiska_ws_connected_sockets` from GET /metrics: sockets the rooms hold right now."""
    # A connection of its own: with short ping intervals the server drops idle pooled ones.
    async with httpx.AsyncClient(base_url=server.url) as http:
        text = (await http.get("/metrics")).text
    return next(int(sample.value) for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name == "vpiska_ws_connected_sockets")


async def wait_for_sockets(server: Server, count: int,
                           timeout: float = 15) -> None:  # noqa: ASYNC109 (a test's deadline)
    """Wait until the rooms hold `count` sockets, as the actors' member tables say.

    Only a count the awaited change brings about is a sentinel: wait for a leave with the
    count below what the rooms held once the leaving socket's join was seen, not for a count
    that may already hold."""
    with trio.fail_after(timeout):
        # The rooms' count, read over HTTP: no frame announces it, so it is asked again.
        while await connected_sockets(server) != count:  # noqa: ASYNC110
            await trio.sleep(0.01)  # how often to ask, not a wait for anything


async def assert_still_serving(server: Server, crowd: Crowd) -> None:
    """The server answers /healthz and serves a live room: what a fault must leave intact."""
    health = await server.http.get("/healthz")
    assert health.status_code == 200
    _, event_id = await host_event(server)
    _, guest = await token_for(server)
    member = await crowd.join(guest, event_id)
    await member.say("still serving")
    await member.wait_for(lambda m: m.chat() == ["still serving"])
