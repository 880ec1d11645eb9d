"""`events/members/remove` on one node (API.md, "Opt-in room features": "The host in charge"):
the member's sockets close with 4003, a ban turns their handshakes away with 403 until the
event closes, and only the host may do it. Across nodes: tests/test_host_cluster.py."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.helpers.clients import Crowd, Member, host_event, socket_url, token_for
from tests.helpers.raw_ws import RawSocket
from tests.helpers.server import EVERY_WEBSOCKET_PATH, Server
from vpiska.domain import new_id

REMOVE = "/api/v1/events/members/remove"


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def handshake(server: Server, token: str, event_id: str, **params: Any) -> int:
    resource = socket_url(server, token, event_id, **params).split(server.ws_url, 1)[1]
    return await RawSocket.handshake_status(port_of(server), resource)


def closed_with(member: Member) -> tuple[int | None, str | None]:
    reason = member.ws.closed
    return member.close_code, None if reason is None else reason.reason


@EVERY_WEBSOCKET_PATH
async def test_a_removed_members_sockets_close_with_4003_and_they_may_rejoin(
    server: Server, crowd: Crowd
) -> None:
    host, event_id = await host_event(server)
    guest_id, guest = await token_for(server)
    _, other = await token_for(server)
    watcher = await crowd.join(other, event_id)
    phone = await crowd.join(guest, event_id)
    tablet = await crowd.join(guest, event_id, v="2")
    await watcher.wait_for(lambda m: m.counts()[-1:] == [2])

    await server.ok(REMOVE, {"eventId": event_id, "userId": guest_id}, token=host)

    with trio.fail_after(15):
        assert await phone.wait_closed() == 4003
        assert await tablet.wait_closed() == 4003
    assert closed_with(phone) == (4003, "removed by the host")
    await watcher.wait_for(lambda m: m.counts()[-1:] == [1])
    assert not watcher.closed.is_set()
    back = await crowd.join(guest, event_id)  # not banned: welcome back
    await back.wait_for(lambda m: m.counts()[-1:] == [2])


@EVERY_WEBSOCKET_PATH
async def test_a_banned_users_handshakes_get_403_until_the_event_closes(
    server: Server, crowd: Crowd
) -> None:
    host, event_id = await host_event(server)
    guest_id, guest = await token_for(server)
    _, other = await token_for(server)
    member = await crowd.join(guest, event_id)

    await server.ok(REMOVE, {"eventId": event_id, "userId": guest_id, "ban": True}, token=host)

    assert await member.wait_closed() == 4003
    assert await handshake(server, guest, event_id) == 403
    assert await handshake(server, guest, event_id, v="2", since="0") == 403
    assert await handshake(server, other, event_id) == 101
    await server.ok(REMOVE, {"eventId": event_id, "userId": guest_id, "ban": True}, token=host)
    await server.ok(REMOVE, {"eventId": event_id, "userId": guest_id}, token=host)
    assert await handshake(server, guest, event_id) == 403  # a ban is not lifted by a remove
    await server.ok("/api/v1/events/close", {"eventId": event_id}, token=host)
    assert await handshake(server, guest, event_id) == 404


async def test_a_user_can_be_banned_before_they_ever_join(server: Server) -> None:
    host, event_id = await host_event(server)
    guest_id, guest = await token_for(server)
    await server.ok(REMOVE, {"eventId": event_id, "userId": guest_id, "ban": True}, token=host)
    assert await handshake(server, guest, event_id) == 403
    event = await server.store.event(event_id)
    assert event is not None
    assert event.banned == {guest_id}  # in the store: every node and every later owner see it


async def test_only_the_host_removes_and_not_himself(server: Server) -> None:
    host, event_id = await host_event(server)
    host_id = (await server.ok("/api/v1/events/get", {"eventId": event_id}))["ownerId"]
    guest_id, guest = await token_for(server)
    assert await server.codes(REMOVE, {"eventId": event_id, "userId": host_id},
                              token=guest) == ["UserIsNotOwner"]
    assert await server.codes(REMOVE, {"eventId": event_id, "userId": host_id, "ban": True},
                              token=host) == ["OwnerCannotBeRemoved"]
    assert await server.codes(REMOVE, {"eventId": new_id(), "userId": guest_id},
                              token=host) == ["EventNotFound"]
    assert await server.codes(REMOVE, {"eventId": event_id, "userId": guest_id}) == [
        "unauthorized"]
    assert await handshake(server, host, event_id) == 101


@pytest.mark.parametrize(("body", "codes"), [
    pytest.param({}, ["IdIsEmpty", "IdIsEmpty"], id="nothing"),
    pytest.param({"eventId": "x", "userId": 5}, ["InvalidIdFormat", "IdIsEmpty"], id="bad-ids"),
    pytest.param({"eventId": "E", "userId": "U", "ban": "true"}, ["BanInvalid"], id="ban-text"),
    pytest.param({"eventId": "E", "userId": "U", "ban": 1}, ["BanInvalid"], id="ban-number"),
    pytest.param({"eventId": "", "userId": "U", "ban": []}, ["IdIsEmpty", "BanInvalid"],
                 id="all-codes"),
])
async def test_bad_bodies_get_every_failing_code(server: Server, body: dict[str, Any],
                                                 codes: list[str]) -> None:
    host, event_id = await host_event(server)
    guest_id, _ = await token_for(server)
    filled = {key: {"E": event_id, "U": guest_id}.get(value, value) if isinstance(value, str)
              else value for key, value in body.items()}
    assert await server.codes(REMOVE, filled, token=host) == codes
    event = await server.store.event(event_id)
    assert event is not None
    assert event.banned == frozenset()
