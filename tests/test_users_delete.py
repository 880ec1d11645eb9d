"""`users/delete` on one node (API.md, "Opt-in room features": "Leaving for good"): the open
event closes, every socket of the account closes with 4004, the record and image go, the chat
lines stay anonymised everywhere they are shown, the token stops working, and the name and
phone are free. Across nodes: tests/test_host_cluster.py."""

from __future__ import annotations

import json
from typing import Any

import trio

from tests.helpers.clients import Crowd, Member, host_event, socket_url, token_for
from tests.helpers.raw_ws import RawSocket
from tests.helpers.server import EVERY_WEBSOCKET_PATH, Server

DELETE = "/api/v1/users/delete"
PASSWORD = "secret1"


async def handshake(server: Server, token: str, event_id: str, **params: Any) -> int:
    resource = socket_url(server, token, event_id, **params).split(server.ws_url, 1)[1]
    return await RawSocket.handshake_status(int(server.url.rsplit(":", 1)[1]), resource)


def chat_objects(member: Member) -> list[dict[str, Any]]:
    return [json.loads(frame.partition("/")[2]) for frame in member.frames
            if frame.startswith("chatMessage/")]


@EVERY_WEBSOCKET_PATH
async def test_a_deleted_account_leaves_no_trace_but_anonymous_lines(
    server: Server, crowd: Crowd
) -> None:
    leaving = await server.sign_up("leaver", "9005550001", PASSWORD)
    token, user_id = leaving["accessToken"], leaving["id"]
    image = await server.ok("/api/v1/users/media/set", token=token,
                            files={"image": ("me.png", b"\x89PNG fake", "image/png")})
    token = image["accessToken"]
    own = await server.ok("/api/v1/events/create", {
        "name": "mine", "address": "here", "coordinates": {"x": 1, "y": 2}}, token=token)
    _, party = await host_event(server)
    _, guest = await token_for(server)

    at_own = await crowd.join(guest, own["id"])
    watcher = await crowd.join(guest, party)
    phone = await crowd.join(token, party)
    tablet = await crowd.join(token, party, v="2")
    await phone.say("hello from me")
    await watcher.wait_for(lambda m: m.chat() == ["hello from me"])
    # From here on the room keeps its chat in memory (events/get is answered from it).
    shown = await server.ok("/api/v1/events/get", {"eventId": party})
    assert shown["chatMessages"][0]["userName"] == "leaver"

    assert await server.codes(DELETE, {"password": "wrong-one"}, token=token) == [
        "InvalidPassword"]
    assert not phone.closed.is_set()
    await server.ok(DELETE, {"password": PASSWORD}, token=token)

    assert await phone.wait_closed() == 4004
    assert await tablet.wait_closed() == 4004
    assert phone.ws.closed is not None
    assert phone.ws.closed.reason == "account deleted"
    assert await at_own.wait_closed() == 1000  # its event closed, as events/close does
    assert at_own.frames[-1] == "closeEvent/"
    await watcher.wait_for(lambda m: m.counts()[-1:] == [1])
    assert not watcher.closed.is_set()

    anonymous = {"userId": user_id, "userName": "", "userImageId": "",
                 "message": "hello from me"}
    shown = await server.ok("/api/v1/events/get", {"eventId": party})
    assert shown["chatMessages"] == [anonymous]
    catching_up = await crowd.join(guest, party, since="0")
    await catching_up.wait_for(lambda m: bool(m.chat()))
    assert chat_objects(catching_up) == [anonymous]
    assert await server.codes("/api/v1/events/get", {"eventId": own["id"]}) == ["EventNotFound"]

    assert await server.codes("/api/v1/users/update", {"name": "x"}, token=token) == [
        "unauthorized"]
    assert await handshake(server, token, party) == 401
    assert (await server.http.get(f"/api/v1/media/{image['imageId']}")).status_code == 404
    assert await server.store.user_by_id(user_id) is None
    again = await server.sign_up("leaver", "9005550001", PASSWORD)  # name and phone are free
    assert again["id"] != user_id


async def test_wrong_passwords_count_against_the_phones_sign_in_limit(server: Server) -> None:
    leaving = await server.sign_up("guesser", "9005550002", PASSWORD)
    token = leaving["accessToken"]
    for _ in range(5):
        assert await server.codes(DELETE, {"password": "not-it-1"}, token=token) == [
            "InvalidPassword"]
    assert await server.codes(DELETE, {"password": PASSWORD}, token=token) == [
        "TooManyRequests"]
    assert await server.store.user_by_id(leaving["id"]) is not None


async def test_delete_needs_a_token_and_a_password(server: Server) -> None:
    leaving = await server.sign_up("keeper", "9005550003", PASSWORD)
    assert await server.codes(DELETE, {"password": PASSWORD}) == ["unauthorized"]
    for body in ({}, {"password": ""}, {"password": 5}, {"password": None}):
        assert await server.codes(DELETE, body, token=leaving["accessToken"]) == [
            "PasswordIsEmpty"]
    assert await server.store.user_by_id(leaving["id"]) is not None


async def test_a_second_delete_with_the_same_token_is_unauthorized(server: Server) -> None:
    leaving = await server.sign_up("twice", "9005550004", PASSWORD)
    await server.ok(DELETE, {"password": PASSWORD}, token=leaving["accessToken"])
    with trio.fail_after(10):
        assert await server.codes(DELETE, {"password": PASSWORD},
                                  token=leaving["accessToken"]) == ["unauthorized"]
