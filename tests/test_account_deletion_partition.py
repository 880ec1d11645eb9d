"""A deleted account's sockets on other nodes when Redis could not carry the `account_deleted`
notice at the moment of the deletion (vpiska/account_deletion.py, docs/host-and-leaving.md).

Either side may be the one cut off from Redis: the node that deleted the account (it tells
the others once Redis answers it again), or a node holding a socket of the account (it asks
the store about its sockets' accounts once its cluster subscription is back). Either way the
socket closes with 4004 after the heal, without a restart.
"""

from __future__ import annotations

import trio

from tests.helpers.clients import Crowd, host_event
from tests.helpers.cluster_fixtures import Node, RedisServer, StartCluster, StartProxy
from tests.helpers.server import Server
from tests.helpers.tcp_proxy import TcpProxy

PASSWORD = "secret1"
# From the heal to the socket's close: a reconnect to Redis (the client's back-off) and a
# retry of the notice, on a loaded machine.
AFTER_HEAL_SECONDS = 20


async def redis_cut_off(node: Node, proxy: TcpProxy) -> None:
    """Cut `node`'s path to Redis and return once it has said so in its log."""
    since = len(node.lines())
    proxy.cut()
    await node.wait_for_line(lambda line: line["event"] == "Redis unreachable", since=since)


async def delete_through(server: Server, token: str) -> None:
    await server.ok("/api/v1/users/delete", {"password": PASSWORD}, token=token)


async def test_a_socket_on_a_node_cut_off_from_redis_closes_once_the_node_is_back(
    cluster: StartCluster, redis_server: RedisServer, tcp_proxy: StartProxy,
    nursery: trio.Nursery,
) -> None:
    group = await cluster(1, redis=redis_server)
    proxy = await tcp_proxy(redis_server.port)
    cut = await group.start_node(REDIS_URL=proxy.url())
    deleting, holding = await group.server(group.nodes[0]), await group.server(cut)
    _, party = await host_event(deleting)
    leaving = await deleting.sign_up("leaver", "9006660101", PASSWORD)
    crowd = Crowd(nursery, holding)
    socket = await crowd.join(leaving["accessToken"], party)

    await redis_cut_off(cut, proxy)
    await delete_through(deleting, leaving["accessToken"])
    assert socket.close_code is None  # the notice could not reach it
    proxy.restore()

    assert await socket.wait_closed(AFTER_HEAL_SECONDS) == 4004
    await crowd.aclose()


async def test_a_deletion_on_a_node_cut_off_from_redis_reaches_the_others_once_it_is_back(
    cluster: StartCluster, redis_server: RedisServer, tcp_proxy: StartProxy,
    nursery: trio.Nursery,
) -> None:
    group = await cluster(1, redis=redis_server)
    proxy = await tcp_proxy(redis_server.port)
    cut = await group.start_node(REDIS_URL=proxy.url())
    deleting, holding = await group.server(cut), await group.server(group.nodes[0])
    _, party = await host_event(holding)
    leaving = await deleting.sign_up("leaver", "9006660102", PASSWORD)
    crowd = Crowd(nursery, holding)
    socket = await crowd.join(leaving["accessToken"], party)

    await redis_cut_off(cut, proxy)
    await delete_through(deleting, leaving["accessToken"])
    assert socket.close_code is None  # the notice could not leave the deleting node
    proxy.restore()

    assert await socket.wait_closed(AFTER_HEAL_SECONDS) == 4004
    await crowd.aclose()
