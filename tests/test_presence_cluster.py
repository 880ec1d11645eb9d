"""Presence across nodes: a v2 socket on a node that does not own the event sees what one on the
owner sees (nodes sharing sqlite and Redis, and machines sharing only MongoDB and Redis), also
after the event moves to another node."""

from __future__ import annotations

import trio

from tests.helpers.clients import Crowd, Member, host_event, token_for
from tests.helpers.cluster_fixtures import Cluster, Node, RedisServer, StartCluster
from tests.helpers.cluster_state import owner_now
from tests.helpers.presence_view import PresenceView, is_presence
from tests.helpers.server import Server


class Watcher:
    """A v2 socket and what it makes of its presence frames."""

    def __init__(self, user_id: str, member: Member) -> None:
        self.user_id = user_id
        self.member = member
        self.view = PresenceView()

    async def sees(self, present: set[str], lists: int = 1) -> None:
        """Wait until it has had `lists` lists and shows exactly `present`."""
        def caught_up(m: Member) -> bool:
            self.view.follow(m.frames)
            return self.view.lists >= lists and self.view.present == present
        await self.member.wait_for(caught_up, timeout=30)


TOKENS: dict[str, str] = {}  # user id -> token, for a second device


async def joined(crowd: Crowd, server: Server, name: str, event_id: str, version: int
                 ) -> tuple[str, Member]:
    user_id, token = await token_for(server, name)
    TOKENS[user_id] = token
    return user_id, await crowd.join(token, event_id, v=version)


async def comings_and_goings(owner: Server, other: Server, event_id: str,
                             nursery: trio.Nursery) -> None:
    """v2 sockets on both nodes, people coming and going on both: every v2 socket ends each
    step with exactly who is there, and events/members says the same on both nodes."""
    on_owner, on_other = Crowd(nursery, owner), Crowd(nursery, other)
    far = Watcher(*await joined(on_other, other, "far", event_id, 2))
    near = Watcher(*await joined(on_owner, owner, "near", event_id, 2))
    old_id, old = await joined(on_other, other, "old", event_id, 1)
    watchers = [far, near]
    present = {far.user_id, near.user_id, old_id}

    async def everyone_sees() -> None:
        for watcher in watchers:
            await watcher.sees(present)
        for server in (owner, other):
            listed = await server.ok("/api/v1/events/members", {"eventId": event_id})
            assert {user["userId"] for user in listed["users"]} == present

    await everyone_sees()
    # Several people at once on both nodes, some of them gone again within the interval.
    arrivals = [await joined((on_owner, on_other)[i % 2], (owner, other)[i % 2],
                             f"guest{i}", event_id, 1 + i % 2) for i in range(8)]
    for _, member in arrivals[:4]:
        await member.ws.aclose()
    present |= {user_id for user_id, _ in arrivals[4:]}
    arrived = [Watcher(user_id, member) for i, (user_id, member) in enumerate(arrivals)
               if i >= 4 and i % 2]  # v2 sockets that joined while others watched, and stay
    watchers += arrived
    await everyone_sees()
    # A second device of the far watcher, on the owner, then the first one's leaving, change
    # nothing: it is still there.
    second = await on_owner.join(TOKENS[far.user_id], event_id, v=2)
    await far.member.ws.aclose()
    await old.ws.aclose()
    present.discard(old_id)
    watchers = [near, *arrived]
    await everyone_sees()
    assert [w.view.lists for w in (far, near, *arrived)] == [1] * 4, "one list, then changes"
    assert second.frames
    assert not any(map(is_presence, old.frames))
    await on_owner.aclose()
    await on_other.aclose()


async def owner_and_other(group: Cluster, redis_server: RedisServer, event_id: str
                          ) -> tuple[Node, Node]:
    """The node that runs the event (not always the one it was opened through), the other."""
    owner = await owner_now(redis_server, event_id, group)
    return owner, next(node for node in group.nodes if node is not owner)


async def test_a_v2_socket_on_another_node_than_the_owner_sees_the_same_presence(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    group = await cluster(2, redis=redis_server)
    _, event_id = await host_event(await group.server(group.nodes[1]))
    owner, other = await owner_and_other(group, redis_server, event_id)
    await comings_and_goings(await group.server(owner), await group.server(other), event_id,
                             nursery)


async def test_presence_across_machines_sharing_only_mongodb_and_redis(
    machines: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    group = await machines(2, redis=redis_server)
    _, event_id = await host_event(await group.server(group.nodes[0]))
    owner, other = await owner_and_other(group, redis_server, event_id)
    await comings_and_goings(await group.server(owner), await group.server(other), event_id,
                             nursery)


async def test_after_the_event_moves_its_v2_sockets_get_a_new_list_then_its_changes(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """The owner's node leaves (SIGTERM): the other node's sockets stay, and the next owner,
    which knows nothing of what they were shown, sends each a list before any change."""
    group = await cluster(2, redis=redis_server)
    _, event_id = await host_event(await group.server(group.nodes[0]))
    leaving, staying = await owner_and_other(group, redis_server, event_id)
    a, b = await group.server(leaving), await group.server(staying)
    on_a, on_b = Crowd(nursery, a), Crowd(nursery, b)
    leaving_id, _ = await joined(on_a, a, "on the leaving node", event_id, 1)
    stays = Watcher(*await joined(on_b, b, "stays", event_id, 2))
    await stays.sees({leaving_id, stays.user_id})
    leaving.sigterm()
    assert await leaving.wait() == 0
    await stays.sees({stays.user_id}, lists=2)  # the new owner's list
    late_id, _ = await joined(on_b, b, "late", event_id, 1)
    await stays.sees({stays.user_id, late_id})
    assert await b.ok("/api/v1/events/members", {"eventId": event_id}) == {"users": [
        {"userId": stays.user_id, "userName": "stays", "userImageId": ""},
        {"userId": late_id, "userName": "late", "userImageId": ""}]}
    await on_a.aclose()
    await on_b.aclose()
