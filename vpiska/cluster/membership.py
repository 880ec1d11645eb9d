"""Which nodes are alive, as this node's heartbeat learns it (vpiska/cluster/nodes.py says why).

Each beat adds this node to `vpiska:nodes` with an expiry one lease TTL ahead (Redis' clock)
and drops the nodes whose beat has expired; the set that comes back is who is alive. A node
that is gone (its beat expired, or it said it left) is forgotten as the gateway of any socket
in this node's rooms (`gone`): its sockets are closed, their members leave.
"""

from __future__ import annotations

from collections.abc import Callable

import coredis

from vpiska.cluster import redis


class Membership:
    """Error handling: `beat` lets Redis errors and timeouts escape; the caller decides what a
    missed beat means (ownership.py fences its rooms before its leases could expire)."""

    def __init__(self, client: coredis.Redis[bytes], node_id: str, ttl: float, *,
                 stopping: Callable[[], bool], gone: Callable[[str], None]) -> None:
        self.node_id = node_id
        self._heartbeat = client.register_script(redis.HEARTBEAT)
        self._ttl = ttl
        self._stopping = stopping
        self._gone = gone
        self.live: frozenset[str] = frozenset()
        self.healthy = False  # Redis answered the last heartbeat

    async def beat(self, *, leaving: bool = False) -> bool:
        """Beat (or leave: also every beat once the node is stopping, while it hands its
        rooms over, so that no node takes it for live again); True if the set of live nodes
        changed."""
        ttl_ms = int(self._ttl * 1000)
        leaving = leaving or self._stopping()
        nodes: list[bytes] = await self._heartbeat(
            keys=[redis.NODES], args=[self.node_id, ttl_ms, "0" if leaving else "1"])
        live = frozenset(node.decode() for node in nodes)
        self.healthy = True
        gone = self.live - live
        changed = live != self.live
        self.live = live
        for node in gone:
            self._gone(node)
        return changed

    def left(self, node: str) -> None:
        """`node` said it left: gone now, not at this node's next beat."""
        self.live = self.live - {node}
        self._gone(node)
