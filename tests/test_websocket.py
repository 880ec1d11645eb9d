"""The WebSocket protocol of API.md: handshake, frames, and what a broken client gets."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from tests.helpers.clients import Crowd, host_event, token_for, wait_for_sockets
from tests.helpers.raw_ws import RawMember, RawSocket, resource
from tests.helpers.server import EVERY_WEBSOCKET_PATH, Server, port_of, stock_hypercorn_fails
from vpiska.actors import Member, Room
from vpiska.domain import new_id
from vpiska.errors import RoomMoved


@EVERY_WEBSOCKET_PATH
async def test_handshake_is_checked_before_the_upgrade(server: Server) -> None:
    token, event_id = await host_event(server)
    _, guest = await token_for(server)
    async def status(token: str | None, event_id: str, **params: Any) -> int:
        return await RawSocket.handshake_status(
            port_of(server), resource(server, token, event_id, **params))
    assert await status(None, event_id) == 401
    assert await status("junk", event_id) == 401
    assert await status(guest, "not-an-id") == 400
    assert await status(guest, event_id, since="-1") == 400
    assert await status(guest, event_id, since="x") == 400
    for version in ("0", "3", "v2", "²", "2 "):
        assert await status(guest, event_id, v=version) == 400
    assert await status(guest, new_id()) == 404
    assert await status(guest, event_id) == 101
    assert await status(guest, event_id, v="1") == 101
    assert await status(guest, event_id, v="2") == 101
    await server.ok("/api/v1/events/close", {"eventId": event_id}, token=token)
    assert await status(guest, event_id) == 404


@EVERY_WEBSOCKET_PATH
@pytest.mark.parametrize("extra_headers", [
    pytest.param(b"", id="ordinary"),
    pytest.param(b"Content-Length: 0\r\n", id="with-a-body-header"),
    pytest.param(b"X-Folded: a\r\n b\r\n", id="obs-fold"),
])
async def test_upgrades_the_direct_path_leaves_to_hypercorn_are_served_alike(
    server: Server, nursery: trio.Nursery, extra_headers: bytes
) -> None:
    """direct_websocket.py serves ordinary upgrades itself and leaves the rest to h11: a
    client sees the same socket either way."""
    _, event_id = await host_event(server)
    _, guest = await token_for(server)
    member = RawMember(await RawSocket.connect(port_of(server), resource(server, guest, event_id),
                                               extra_headers=extra_headers))
    nursery.start_soon(member.collect)
    async with member.raw.stream:
        with trio.fail_after(30):
            await member.wait_for(lambda m: m.counts() == [1])
            await member.say("either way")
            await member.wait_for(lambda m: m.chat() == ["either way"])


@EVERY_WEBSOCKET_PATH
async def test_bearer_header_is_accepted(server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    _, guest = await token_for(server)
    member = await crowd.join(None, event_id, headers={"Authorization": f"Bearer {guest}"})
    await member.wait_for(lambda m: m.counts() == [1])


@EVERY_WEBSOCKET_PATH
async def test_chat_reaches_every_member_including_the_sender(
    server: Server, crowd: Crowd
) -> None:
    _, event_id = await host_event(server)
    ann_id, ann = await token_for(server, "ann")
    _, bob = await token_for(server, "bob")
    first = await crowd.join(ann, event_id)
    second = await crowd.join(bob, event_id)
    await first.say("hi / there")
    await first.say("")
    for member in (first, second):
        await member.wait_for(lambda m: len(m.chat()) == 2)
    line = next(f for f in second.frames if f.startswith("chatMessage/"))
    assert line == ('chatMessage/{"userId":"' + ann_id + '","userName":"ann","userImageId":"",'
                    '"message":"hi / there"}')
    assert first.chat() == second.chat() == ["hi / there", ""]
    event = await server.ok("/api/v1/events/get", {"eventId": event_id})
    assert [c["message"] for c in event["chatMessages"]] == ["hi / there", ""]
    assert event["chatMessages"][0] == {"userId": ann_id, "userName": "ann",
                                        "userImageId": "", "message": "hi / there"}


@EVERY_WEBSOCKET_PATH
async def test_unknown_client_frames_are_ignored(server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    _, guest = await token_for(server)
    member = await crowd.join(guest, event_id)
    for frame in ("hello", "ping/x", "chatmessage/x", "/x"):
        await member.ws.send_message(frame)
    await member.say("real")
    await member.wait_for(lambda m: m.chat() == ["real"])
    assert [f.split("/")[0] for f in member.frames] == ["eventUpdated", "chatMessage"]


@EVERY_WEBSOCKET_PATH
async def test_users_count_counts_a_user_once_across_devices(
    server: Server, crowd: Crowd
) -> None:
    _, event_id = await host_event(server)
    _, ann = await token_for(server)
    _, bob = await token_for(server)
    watcher = await crowd.join(bob, event_id)
    await watcher.wait_for(lambda m: m.counts() == [1])
    phone = await crowd.join(ann, event_id)
    await watcher.wait_for(lambda m: m.counts()[-1:] == [2])
    tablet = await crowd.join(ann, event_id)  # same user: no count change for the others
    await tablet.wait_for(lambda m: m.counts() == [2])  # but the state at once (API.md)
    await tablet.say("from the tablet")
    await watcher.wait_for(lambda m: m.chat() == ["from the tablet"])
    assert (await server.ok("/api/v1/events/get", {"eventId": event_id}))["usersCount"] == 2
    await phone.ws.aclose()
    await wait_for_sockets(server, 2)  # the phone's leave has been processed
    assert (await server.ok("/api/v1/events/get", {"eventId": event_id}))["usersCount"] == 2
    await tablet.say("still two")  # a sentinel through the room after the leave
    await watcher.wait_for(lambda m: m.chat()[-1:] == ["still two"])
    assert watcher.counts()[-1] == 2  # one device left: the user is still there
    await tablet.ws.aclose()
    await watcher.wait_for(lambda m: m.counts()[-1] == 1)
    found = await server.ok("/api/v1/events/range", {"coordinates": {"x": 10, "y": 20},
                                                    "horizontalRange": 1, "verticalRange": 1})
    assert found[0]["usersCount"] == 1


UNLIMITED_CHAT = pytest.mark.parametrize(
    "config_overrides", [{"chat_rate_per_second": 1e6, "chat_burst": 10**6}], ids=["no-limit"])


@EVERY_WEBSOCKET_PATH
@UNLIMITED_CHAT
async def test_catch_up_since_has_no_gap_and_no_duplicate(
    server: Server, crowd: Crowd, nursery: trio.Nursery
) -> None:
    _, event_id = await host_event(server)
    _, ann = await token_for(server)
    _, bob = await token_for(server)
    talker = await crowd.join(ann, event_id)
    for i in range(5):
        await talker.say(f"early {i}")
    await talker.wait_for(lambda m: len(m.chat()) == 5)
    lines = [f"line {i}" for i in range(200)]

    async def talk() -> None:
        for line in lines:
            await talker.say(line)

    nursery.start_soon(talk)
    late = await crowd.join(bob, event_id, since=2)  # joins while lines keep coming
    expected = [f"early {i}" for i in range(2, 5)] + lines
    await late.wait_for(lambda m: len(m.chat()) >= len(expected))
    assert late.chat() == expected
    _, cid = await token_for(server)
    old_client = await crowd.join(cid, event_id)  # no `since`: no history, as before
    await old_client.wait_for(lambda m: m.counts() != [])
    assert old_client.chat() == []


UNPARSEABLE_FRAME = (
    "a frame wsproto cannot parse (invalid UTF-8, a bad opcode) ends the TCP connection without "
    "the close frame RFC 6455 section 7.1.7 asks for, so the client never learns why")


@EVERY_WEBSOCKET_PATH
@pytest.mark.parametrize(
    ("opcode", "payload", "code"),
    [
        pytest.param(0x2, b"binary", 1003, id="binary-frame"),
        pytest.param(0x1, b"chatMessage/" + b"a" * 70_000, 1009, id="oversized"),
    ],
)
async def test_protocol_violations_close_only_that_socket(
    server: Server, crowd: Crowd, opcode: int, payload: bytes, code: int
) -> None:
    """Each violation closes with its RFC 6455 code, and the room goes on."""
    await violate(server, crowd, opcode, payload, code)


@stock_hypercorn_fails(UNPARSEABLE_FRAME)
@pytest.mark.parametrize(
    ("opcode", "payload", "code"),
    [
        pytest.param(0x1, b"chatMessage/\xff\xfe", 1007, id="invalid-utf8"),
        pytest.param(0x3, b"reserved opcode", 1002, id="bad-opcode"),
    ],
)
async def test_unparseable_frames_close_only_that_socket(
    server: Server, crowd: Crowd, opcode: int, payload: bytes, code: int
) -> None:
    """The same for frames wsproto cannot parse: the peer gets the close frame it is owed."""
    await violate(server, crowd, opcode, payload, code)


async def violate(server: Server, crowd: Crowd, opcode: int, payload: bytes, code: int) -> None:
    """A member sends a frame that breaks the protocol: it is closed with `code` and leaves the
    room, and a bystander's room goes on."""
    _, event_id = await host_event(server)
    _, guest = await token_for(server)
    _, other = await token_for(server)
    bystander = await crowd.join(guest, event_id)
    raw = await RawSocket.connect(port_of(server), resource(server, other, event_id))
    async with raw.stream:
        # Its join's state: it is in the room.
        assert (await raw.next_text()).startswith("eventUpdated/")
        await bystander.wait_for(lambda m: m.counts()[-1:] == [2])
        await raw.send_frame(opcode, payload)
        with trio.fail_after(10):
            assert await raw.close_code() == code
    # The count goes back from the 2 the bystander saw: the violator left the room.
    await bystander.wait_for(lambda m: m.counts()[-1:] == [1])
    await bystander.say("room is fine")
    await bystander.wait_for(lambda m: m.chat() == ["room is fine"])
    assert json.loads((await server.http.get("/api/v1/nothing")).text)["errors"]


@stock_hypercorn_fails(UNPARSEABLE_FRAME)
async def test_many_clients_failing_at_once_do_not_stop_the_server(server: Server) -> None:
    """Regression: stock hypercorn 0.18 could crash on a close racing its first ping (the
    connection guard now ends that connection only)."""
    _, event_id = await host_event(server)

    async def misbehave(i: int) -> None:
        _, token = await token_for(server)
        raw = await RawSocket.connect(port_of(server), resource(server, token, event_id))
        async with raw.stream:
            await raw.send_frame(0x1 if i % 2 else 0x3, b"\xff\xfe" * 3)
            with trio.fail_after(10):
                assert await raw.close_code() in (1002, 1007)

    async with trio.open_nursery() as nursery:
        for i in range(60):
            nursery.start_soon(misbehave, i)
    # Every failed member leaves the room. hypercorn sends these close frames (and closes the
    # connection) before the session learns of it, so there is no frame to wait for: the
    # rooms' socket count is watched instead, with a deadline. Each session asks to join
    # before it reads a frame, so the joins were queued long before the last close arrived.
    await wait_for_sockets(server, 0)
    event = await server.ok("/api/v1/events/get", {"eventId": event_id})  # behind every leave
    assert event["usersCount"] == 0
    _, guest = await token_for(server)
    raw = await RawSocket.connect(port_of(server), resource(server, guest, event_id))
    async with raw.stream:  # the server still serves, and the room counts only the newcomer
        state = await raw.next_text()
        assert json.loads(state.split("/", 1)[1])["usersCount"] == 1


@EVERY_WEBSOCKET_PATH
async def test_a_socket_whose_room_moved_before_it_joined_is_told_to_reconnect(
    server: Server, crowd: Crowd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The room it found ended here as it joined (handed over, or fenced, in a cluster): the
    event is served elsewhere, so the socket closes with 1012 (reconnect), not 1000 (as for a
    closed event) nor 1011."""
    _, event_id = await host_event(server)
    _, token = await token_for(server)

    async def moved(self: Room, member: Member) -> None:
        raise RoomMoved

    monkeypatch.setattr(Room, "enter", moved)
    raw = await RawSocket.connect(port_of(server), resource(server, token, event_id))
    async with raw.stream:
        with trio.fail_after(10):
            assert await raw.close_code() == 1012
    monkeypatch.undo()
    await crowd.join(token, event_id)  # the room itself goes on
