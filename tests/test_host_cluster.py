"""The host in charge and leaving for good across nodes (API.md, "Opt-in room features"): the
host's request on one node, the member's sockets on others; an account's sockets on two nodes.
Real node processes over a real Redis, sharing sqlite (`cluster`) or only MongoDB (`machines`).
"""

from __future__ import annotations

from typing import Any

import trio

from tests.helpers.clients import Crowd, host_event, socket_url, token_for
from tests.helpers.cluster_fixtures import Cluster, RedisServer, StartCluster
from tests.helpers.cluster_state import eventually, owner_now
from tests.helpers.raw_ws import RawSocket
from tests.helpers.server import Server

REMOVE = "/api/v1/events/members/remove"
PASSWORD = "secret1"


async def handshake(server: Server, token: str, event_id: str, **params: Any) -> int:
    resource = socket_url(server, token, event_id, **params).split(server.ws_url, 1)[1]
    return await RawSocket.handshake_status(int(server.url.rsplit(":", 1)[1]), resource)


async def owner_and_gateway(group: Cluster, redis_server: RedisServer, event_id: str
                            ) -> tuple[Server, Server]:
    owner = await owner_now(redis_server, event_id, group)
    gateway = next(node for node in group.nodes if node is not owner)
    return await group.server(owner), await group.server(gateway)


async def a_member_removed_and_banned_through_the_gateway(
    group: Cluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    first = await group.server(group.nodes[0])
    host, event_id = await host_event(first)
    owner, gateway = await owner_and_gateway(group, redis_server, event_id)
    guest_id, guest = await token_for(owner)
    _, other = await token_for(owner)
    on_owner, on_gateway = Crowd(nursery, owner), Crowd(nursery, gateway)
    watcher = await on_gateway.join(other, event_id)
    here = await on_owner.join(guest, event_id)
    there = await on_gateway.join(guest, event_id, v="2")
    await watcher.wait_for(lambda m: m.counts()[-1:] == [2])

    await gateway.ok(REMOVE, {"eventId": event_id, "userId": guest_id, "ban": True},
                     token=host)

    assert await there.wait_closed() == 4003
    assert await here.wait_closed() == 4003
    await watcher.wait_for(lambda m: m.counts()[-1:] == [1])
    assert await handshake(gateway, guest, event_id) == 403
    assert await handshake(owner, guest, event_id) == 403
    assert await handshake(gateway, other, event_id) == 101
    await on_owner.aclose()
    await on_gateway.aclose()


async def test_the_host_through_one_node_removes_and_bans_a_member_on_both(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    group = await cluster(2, redis=redis_server)
    await a_member_removed_and_banned_through_the_gateway(group, redis_server, nursery)


async def test_across_machines_the_host_removes_and_bans_a_member(
    machines: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    group = await machines(2, redis=redis_server)
    await a_member_removed_and_banned_through_the_gateway(group, redis_server, nursery)


async def test_a_third_node_closes_the_banned_members_socket_and_then_refuses_them(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """The host's request through one gateway, the member's socket on another: that node
    closes the socket (the event's stream) and refuses the user's handshakes once it knows of
    the ban: from the owner's notice (the cluster channel, in no order with the stream) or,
    if a handshake comes first, from the owner turning that one away. So it is waited for."""
    group = await cluster(3, redis=redis_server)
    first = await group.server(group.nodes[0])
    host, event_id = await host_event(first)
    owner_node = await owner_now(redis_server, event_id, group)
    forwarding, holding = [await group.server(node) for node in group.nodes
                           if node is not owner_node]
    guest_id, guest = await token_for(forwarding)
    crowd = Crowd(nursery, holding)
    member = await crowd.join(guest, event_id)

    await forwarding.ok(REMOVE, {"eventId": event_id, "userId": guest_id, "ban": True},
                        token=host)

    assert await member.wait_closed() == 4003

    async def refused() -> bool:
        return await handshake(holding, guest, event_id) == 403

    await eventually(refused, 15)
    assert await handshake(forwarding, guest, event_id) == 403
    await crowd.aclose()


async def test_a_ban_outlives_its_owner_node(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """The ban is the store's: the node that takes the event over refuses the user too."""
    group = await cluster(3, redis=redis_server)
    first = await group.server(group.nodes[0])
    host, event_id = await host_event(first)
    owner_node = await owner_now(redis_server, event_id, group)
    owner = await group.server(owner_node)
    guest_id, guest = await token_for(owner)
    await owner.ok(REMOVE, {"eventId": event_id, "userId": guest_id, "ban": True}, token=host)
    owner_node.sigterm()
    assert await owner_node.wait() == 0
    survivors = [node for node in group.nodes if node is not owner_node]
    successor = await owner_now(redis_server, event_id, group)
    assert successor in survivors
    for node in survivors:
        assert await handshake(await group.server(node), guest, event_id) == 403


async def test_a_deleted_accounts_sockets_on_two_nodes_both_close_with_4004(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    group = await cluster(2, redis=redis_server)
    a, b = [await group.server(node) for node in group.nodes]
    _, party = await host_event(a)
    leaving = await a.sign_up("leaver", "9006660001", PASSWORD)
    token, user_id = leaving["accessToken"], leaving["id"]
    _, guest = await token_for(a)
    own = await b.ok("/api/v1/events/create", {
        "name": "mine", "address": "here", "coordinates": {"x": 1, "y": 2}}, token=token)
    on_a, on_b = Crowd(nursery, a), Crowd(nursery, b)
    at_own = await on_a.join(guest, own["id"])
    watcher = await on_b.join(guest, party)
    mine_a = await on_a.join(token, party)
    mine_b = await on_b.join(token, party, v="2")
    await mine_b.say("remember me")
    await watcher.wait_for(lambda m: m.chat() == ["remember me"])
    for server in (a, b):  # the rooms and the mirror hold the line with its name
        shown = await server.ok("/api/v1/events/get", {"eventId": party})
        assert shown["chatMessages"][0]["userName"] == "leaver"

    await a.ok("/api/v1/users/delete", {"password": PASSWORD}, token=token)

    assert await mine_a.wait_closed() == 4004
    assert await mine_b.wait_closed() == 4004  # closed by node b on the cluster's notice
    assert await at_own.wait_closed() == 1000  # its event closed, wherever its room ran
    assert at_own.frames[-1] == "closeEvent/"
    await watcher.wait_for(lambda m: m.counts()[-1:] == [1])
    for server in (a, b):
        assert await handshake(server, token, party) == 401
        assert await server.codes("/api/v1/users/update", {"name": "x"}, token=token) == [
            "unauthorized"]
        shown = await server.ok("/api/v1/events/get", {"eventId": party})
        assert shown["chatMessages"] == [{"userId": user_id, "userName": "",
                                          "userImageId": "", "message": "remember me"}]
    await b.sign_up("leaver", "9006660001", PASSWORD)
    await on_a.aclose()
    await on_b.aclose()


async def test_a_node_that_missed_a_deletion_while_redis_was_away_forgets_the_account_after(
    cluster: StartCluster, redis_server: RedisServer
) -> None:
    """The account_deleted notice cannot reach node b while Redis is down: b's cache keeps the
    account until its cluster subscription is renewed, then it asks the store again."""
    group = await cluster(2, redis=redis_server)
    a, b = [await group.server(node) for node in group.nodes]
    _, party = await host_event(a)
    leaving = await a.sign_up("away", "9006660002", PASSWORD)
    token = leaving["accessToken"]
    assert await handshake(b, token, party) == 101  # b knows the account from here on
    await redis_server.kill()
    await a.ok("/api/v1/users/delete", {"password": PASSWORD}, token=token)
    await redis_server.restart()

    async def refused() -> bool:
        return await handshake(b, token, party) == 401

    await eventually(refused, 30)
