"""Presence over real sockets on one node: what v2 clients see, what v1 clients do not, and
`POST /api/v1/events/members`."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import trio

from tests.helpers.clients import Crowd, Member, host_event, token_for
from tests.helpers.presence_view import PresenceView, is_presence
from tests.helpers.raw_ws import RawMember, RawSocket, resource
from tests.helpers.server import Server, port_of
from vpiska.domain import new_id

# The crowd of the join storm below. PRESENCE_STORM=5000 is the size issue 20 names: 22 s on an
# idle 2-core machine, 90 s on a loaded one; `make test` runs 2,000 (about 10 s and 40 s).
STORM = int(os.environ.get("PRESENCE_STORM", "2000"))


async def following(member: Member, view: PresenceView,
                    done: Callable[[PresenceView], bool]) -> None:
    def caught_up(m: Member) -> bool:
        view.follow(m.frames)
        return view.users is not None and done(view)

    await member.wait_for(caught_up)


async def test_v2_sockets_see_the_list_then_who_comes_and_goes_and_v1_sockets_nothing_new(
    server: Server, crowd: Crowd
) -> None:
    _, event_id = await host_event(server)
    (old_id, old_token), (ann_id, ann_token), (bob_id, bob_token) = [
        await token_for(server, name) for name in ("old", "ann", "bob")]
    old = await crowd.join(old_token, event_id)
    ann, ann_view = await crowd.join(ann_token, event_id, v=2), PresenceView()
    await following(ann, ann_view, lambda v: v.present == {old_id, ann_id})
    assert ann_view.users is not None
    assert ann_view.users[ann_id] == {"userId": ann_id, "userName": "ann", "userImageId": ""}
    bob, bob_view = await crowd.join(bob_token, event_id, v=2), PresenceView()
    await following(bob, bob_view, lambda v: v.present == {old_id, ann_id, bob_id})
    await following(ann, ann_view, lambda v: v.present == {old_id, ann_id, bob_id})
    await old.ws.aclose()
    for member, view in ((ann, ann_view), (bob, bob_view)):
        await following(member, view, lambda v: v.present == {ann_id, bob_id})
    assert [ann_view.lists, bob_view.lists] == [1, 1]
    assert not any(map(is_presence, old.frames))


async def test_events_members_lists_each_present_user_once_in_the_order_they_came(
    server: Server, crowd: Crowd
) -> None:
    _, event_id = await host_event(server)
    users = [await token_for(server, name) for name in ("ann", "bob")]
    for user_id, token in (users[0], users[1], users[0]):  # ann on two devices
        await crowd.join(token, event_id, v=1 + (user_id == users[1][0]))
    result = await server.ok("/api/v1/events/members", {"eventId": event_id})
    assert result == {"users": [{"userId": users[0][0], "userName": "ann", "userImageId": ""},
                                {"userId": users[1][0], "userName": "bob", "userImageId": ""}]}
    # The same list, byte for byte, as bob's socket (the v2 one) got it.
    bob = crowd.members[1]
    await bob.wait_for(lambda m: any(map(is_presence, m.frames)))
    body = (await server.http.post("/api/v1/events/members", json={"eventId": event_id})).text
    assert body == ('{"isSuccess":true,"errors":null,"result":'
                    + next(filter(is_presence, bob.frames)).removeprefix("presence/") + "}")


async def test_events_members_refuses_what_is_not_an_open_event(server: Server) -> None:
    owner, event_id = await host_event(server)
    assert await server.ok("/api/v1/events/members", {"eventId": event_id}) == {"users": []}
    for body, codes in [({}, ["IdIsEmpty"]), ({"eventId": ""}, ["IdIsEmpty"]),
                        ({"eventId": 5}, ["IdIsEmpty"]), ({"eventId": ["x"]}, ["IdIsEmpty"]),
                        ({"eventId": "not-an-id"}, ["InvalidIdFormat"]),
                        ({"eventId": new_id()}, ["EventNotFound"])]:
        assert await server.codes("/api/v1/events/members", body) == codes, body
    await server.ok("/api/v1/events/close", {"eventId": event_id}, token=owner)
    assert await server.codes("/api/v1/events/members", {"eventId": event_id}) == [
        "EventNotFound"]


# 100 handshakes in flight: the storm measures presence, not admission (test_admission.py).
@pytest.mark.parametrize("config_overrides",
                         [{"ws_ping_seconds": 600, "max_pending_handshakes": 0}], ids=["no-pings"])
async def test_a_join_storm_costs_watchers_a_bounded_number_of_presence_frames(
    server: Server, nursery: trio.Nursery
) -> None:
    """STORM sockets (every tenth v2) arrive and leave while 10 v2 watchers look on: each
    watcher gets its list and at most one change of each kind per announcement (announcing
    each arrival would be thousands of frames), and ends with exactly the watchers."""
    _, event_id = await host_event(server)
    port = port_of(server)

    async def connect(version: int) -> tuple[str, RawMember]:
        user_id, token = await token_for(server)
        raw = await RawSocket.connect(port, resource(server, token, event_id, v=version))
        member = RawMember(raw)
        nursery.start_soon(member.collect)
        return user_id, member

    watchers = [await connect(2) for _ in range(10)]
    views = [PresenceView() for _ in watchers]
    crowd: list[RawMember] = []
    old: list[RawMember] = []  # the crowd's v1 sockets
    limit = trio.CapacityLimiter(100)

    async def arrive(i: int) -> None:
        async with limit:
            version = 2 if i % 10 == 0 else 1
            crowd.append((await connect(version))[1])
            if version == 1:
                old.append(crowd[-1])

    async def everyone_sees(present: set[str]) -> None:
        async def watch(member: RawMember, view: PresenceView) -> None:
            def caught_up(m: RawMember) -> bool:
                view.follow(m.frames)
                return view.users is not None and view.present == present
            await member.wait_for(caught_up, 120)

        async with trio.open_nursery() as waiting:
            for (_, member), view in zip(watchers, views, strict=True):
                waiting.start_soon(watch, member, view)

    started = trio.current_time()
    async with trio.open_nursery() as arrivals:
        for i in range(STORM):
            arrivals.start_soon(arrive, i)
    await watchers[0][1].wait_for_count(len(watchers) + STORM, 120)
    for member in crowd:
        await member.raw.stream.aclose()
    await everyone_sees({user_id for user_id, _ in watchers})
    storm = trio.current_time() - started
    # The interval only stretches in a crowd (members / COUNT_FRAMES_PER_SECOND).
    announcements = storm / (server.config.event_update_interval_ms / 1000) + 2
    for view in views:
        assert view.lists == 1
        assert view.changes <= 2 * announcements, (view.changes, storm)
    print(f"presence storm of {STORM}: {storm:.1f} s; changes per watcher "
          f"{[view.changes for view in views]}; largest frame {max(v.largest for v in views)}")
    assert old
    assert not any(is_presence(frame) for member in old for frame in member.frames)
    for _, member in watchers:
        await member.raw.stream.aclose()
