"""Every `/api/v1/events/*` row of API.md over a real socket, frames included."""

from __future__ import annotations

import pytest
import trio

from tests.helpers.clients import Crowd, host_event, token_for
from tests.helpers.server import BOTH_WRITE_PATHS, Server
from vpiska.domain import new_id

pytestmark = BOTH_WRITE_PATHS

CREATE, GET, RANGE = "/api/v1/events/create", "/api/v1/events/get", "/api/v1/events/range"
UPDATE, CLOSE = "/api/v1/events/update", "/api/v1/events/close"
ADD_MEDIA, REMOVE_MEDIA = "/api/v1/events/media/add", "/api/v1/events/media/remove"


async def test_create_returns_event_response(server: Server) -> None:
    owner = await server.sign_up()
    body = {"name": "party", "address": "street 1", "coordinates": {"x": 0, "y": -12.5}}
    event = await server.ok(CREATE, body, token=owner["accessToken"])
    assert list(event) == ["id", "ownerId", "name", "address", "coordinates", "usersCount",
                           "media", "chatMessages"]
    assert event["ownerId"] == owner["id"]
    assert event["coordinates"] == {"x": 0, "y": -12.5}
    assert (event["usersCount"], event["media"], event["chatMessages"]) == (0, [], [])
    login = await server.ok("/api/v1/users/login", {"phone": "9001234567", "password": "secret1"})
    assert login["eventId"] == event["id"]


@pytest.mark.parametrize(
    ("body", "codes"),
    [
        pytest.param({}, ["NameIsEmpty", "AddressIsEmpty", "CoordinatesIsEmpty"], id="empty"),
        pytest.param({"name": 1, "address": [], "coordinates": "x"},
                     ["NameIsEmpty", "AddressIsEmpty", "CoordinatesIsEmpty"], id="wrong-types"),
        pytest.param({"name": "a", "address": "b", "coordinates": {"x": 1}},
                     ["CoordinatesIsEmpty"], id="no-y"),
        pytest.param({"name": "a", "address": "b", "coordinates": {"x": True, "y": 1}},
                     ["CoordinatesIsEmpty"], id="bool-x"),
    ],
)
async def test_create_validation(server: Server, body: dict[str, object], codes: list[str]) -> None:
    _, token = await token_for(server)
    assert await server.codes(CREATE, body, token=token) == codes


async def test_create_needs_a_token(server: Server) -> None:
    assert await server.codes(CREATE, {"name": "a"}) == ["unauthorized"]


async def test_nan_coordinates_are_not_json(server: Server) -> None:
    _, token = await token_for(server)
    body = b'{"name": "a", "address": "b", "coordinates": {"x": NaN, "y": 1}}'
    assert await server.codes(CREATE, content=body, token=token,
                              headers={"Content-Type": "application/json"}) == ["InternalError"]


async def test_one_open_event_per_owner_also_under_concurrency(server: Server) -> None:
    _, token = await token_for(server)
    body = {"name": "a", "address": "b", "coordinates": {"x": 1, "y": 2}}
    outcomes: list[bool] = []

    async def create() -> None:
        envelope = await server.call(CREATE, body, token=token)
        assert envelope["isSuccess"] or envelope["errors"] == [
            {"errorCode": "OwnerAlreadyHasEvent"}]
        outcomes.append(envelope["isSuccess"])

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(create)
    assert outcomes.count(True) == 1
    events = await server.ok(RANGE, {"coordinates": {"x": 1, "y": 2}, "horizontalRange": 0,
                                     "verticalRange": 0})
    assert len(events) == 1
    await server.ok(CLOSE, {"eventId": events[0]["id"]}, token=token)
    await server.ok(CREATE, body, token=token)  # a closed event does not block a new one


async def test_get_validation_and_not_found(server: Server) -> None:
    token, event_id = await host_event(server)
    assert await server.codes(GET, {}) == ["IdIsEmpty"]
    assert await server.codes(GET, {"eventId": "nope"}) == ["InvalidIdFormat"]
    assert await server.codes(GET, {"eventId": new_id()}) == ["EventNotFound"]
    assert (await server.ok(GET, {"eventId": event_id}))["id"] == event_id
    await server.ok(CLOSE, {"eventId": event_id}, token=token)
    assert await server.codes(GET, {"eventId": event_id}) == ["EventNotFound"]


async def test_range_validation_and_bounds(server: Server) -> None:
    assert await server.codes(RANGE, {}) == [
        "HorizontalRangeIsEmpty", "VerticalRangeIsEmpty", "CoordinatesIsEmpty"]
    _, first = await host_event(server, "first", x=10, y=20)
    _, second = await host_event(server, "second", x=12, y=20)
    _, third = await host_event(server, "third", x=11, y=22)
    def query(x: float, y: float, h: float, v: float) -> dict[str, object]:
        return {"coordinates": {"x": x, "y": y}, "horizontalRange": h, "verticalRange": v}
    everything = await server.ok(RANGE, query(11, 21, 2, 2))  # bounds are inclusive
    assert [e["id"] for e in everything] == [first, second, third]  # oldest first
    assert everything[0] == {"id": first, "name": "first", "usersCount": 0,
                             "coordinates": {"x": 10, "y": 20}}
    assert [e["id"] for e in await server.ok(RANGE, query(10, 20, 0, 0))] == [first]
    assert await server.ok(RANGE, query(100, 100, 1, 1)) == []
    assert await server.ok(RANGE, query(11, 21, -2, 2)) == []


async def test_update_is_owner_only_and_broadcast_at_once(
    server: Server, crowd: Crowd
) -> None:
    token, event_id = await host_event(server)
    _, guest = await token_for(server)
    member = await crowd.join(guest, event_id)
    await member.wait_for(lambda m: m.counts() == [1])
    body = {"eventId": event_id, "address": "new street", "coordinates": {"x": 1.5, "y": 2}}
    assert await server.codes(UPDATE, {}, token=token) == [
        "IdIsEmpty", "AddressIsEmpty", "CoordinatesIsEmpty"]
    assert await server.codes(UPDATE, body, token=guest) == ["UserIsNotOwner"]
    assert await server.codes(UPDATE, {**body, "eventId": new_id()}, token=token) == [
        "EventNotFound"]
    assert await server.ok(UPDATE, body, token=token) is None
    await member.wait_for(lambda m: len(m.frames) == 2)
    assert member.frames[1] == (
        f'eventUpdated/{{"eventId":"{event_id}","name":"party","address":"new street",'
        f'"usersCount":1,"coordinates":{{"x":1.5,"y":2}}}}')
    event = await server.ok(GET, {"eventId": event_id})
    assert event["address"] == "new street"
    assert event["usersCount"] == 1
    moved = await server.ok(RANGE, {"coordinates": {"x": 1.5, "y": 2}, "horizontalRange": 0,
                                    "verticalRange": 0})
    assert [e["id"] for e in moved] == [event_id]


async def test_close_is_owner_only_and_drops_everyone(
    server: Server, crowd: Crowd
) -> None:
    token, event_id = await host_event(server)
    _, guest = await token_for(server)
    member = await crowd.join(guest, event_id)
    await member.wait_for(lambda m: m.counts() == [1])
    assert await server.codes(CLOSE, {"eventId": event_id}, token=guest) == ["UserIsNotOwner"]
    assert await server.ok(CLOSE, {"eventId": event_id}, token=token) is None
    assert await member.wait_closed() == 1000
    assert member.frames[-1] == "closeEvent/"
    assert await server.codes(CLOSE, {"eventId": event_id}, token=token) == ["EventNotFound"]
    assert await server.ok(RANGE, {"coordinates": {"x": 10, "y": 20}, "horizontalRange": 1,
                                   "verticalRange": 1}) == []


async def test_media_add_and_remove(server: Server, crowd: Crowd) -> None:
    token, event_id = await host_event(server)
    _, guest = await token_for(server)
    member = await crowd.join(guest, event_id)  # in the room once joined: it gets the broadcast
    photo = {"media": ("p.jpg", b"jpeg", "image/jpeg")}
    assert await server.codes(ADD_MEDIA, token=token, files=photo) == ["IdIsEmpty"]
    assert await server.codes(ADD_MEDIA, token=guest, files=photo, data={"eventId": event_id}) == [
        "UserIsNotOwner"]
    assert await server.codes(ADD_MEDIA, token=token, files=photo,
                              data={"eventId": new_id()}) == ["EventNotFound"]
    assert await server.codes(ADD_MEDIA, token=token, data={"eventId": event_id},
                              files={"other": ("p", b"x", "a/b")}) == ["InternalError"]
    assert await server.ok(ADD_MEDIA, token=token, files=photo, data={"eventId": event_id}) is None
    event = await server.ok(GET, {"eventId": event_id})
    [attached] = event["media"]
    assert attached["contentType"] == "image/jpeg"
    assert (await server.http.get(f"/api/v1/media/{attached['id']}")).content == b"jpeg"
    added = f'mediaAdded/{{"id":"{attached["id"]}","contentType":"image/jpeg"}}'
    await member.wait_for(lambda m: added in m.frames)

    assert await server.codes(REMOVE_MEDIA, {"eventId": "x", "mediaId": ""}, token=token) == [
        "InvalidIdFormat", "IdIsEmpty"]
    assert await server.codes(REMOVE_MEDIA, {"eventId": event_id, "mediaId": new_id()},
                              token=token) == ["MediaNotFound"]
    assert await server.codes(REMOVE_MEDIA, {"eventId": event_id, "mediaId": attached["id"]},
                              token=guest) == ["UserIsNotOwner"]
    await server.ok(REMOVE_MEDIA, {"eventId": event_id, "mediaId": attached["id"]}, token=token)
    await member.wait_for(lambda m: f"mediaRemoved/{attached['id']}" in m.frames)
    assert (await server.ok(GET, {"eventId": event_id}))["media"] == []
    assert member.frames.index(added) < member.frames.index(f"mediaRemoved/{attached['id']}")


@pytest.mark.parametrize("config_overrides", [{"chat_memory_lines": 2}, {}],
                         ids=["chat-from-the-store", "chat-from-the-actor"])
async def test_get_shows_the_whole_chat_whether_the_actor_holds_it_or_not(
    server: Server, crowd: Crowd
) -> None:
    _, event_id = await host_event(server)
    user_id, token = await token_for(server, "ann")
    member = await crowd.join(token, event_id)
    for i in range(4):
        await member.say(f"line {i}")
        if i == 0:  # the first events/get makes the actor load what it holds
            await member.wait_for(lambda m: m.chat() == ["line 0"])
            first = await server.ok("/api/v1/events/get", {"eventId": event_id})
            assert [c["message"] for c in first["chatMessages"]] == ["line 0"]
    await member.wait_for(lambda m: len(m.chat()) == 4)
    event = await server.ok("/api/v1/events/get", {"eventId": event_id})
    assert event["chatMessages"] == [
        {"userId": user_id, "userName": "ann", "userImageId": "", "message": f"line {i}"}
        for i in range(4)]
