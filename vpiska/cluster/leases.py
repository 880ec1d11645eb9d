"""Ownership of events: a lease in Redis with a fencing epoch, one owner cluster-wide.

A node acquires an event's lease (`SET NX PX`) together with a new epoch (`INCR`), renews all
its leases every third of the TTL, and releases them on a handover. The epoch is what makes a
lease safe against a node that was paused past it: the store refuses every write of an epoch
older than the event's (vpiska/store), so a node that wakes up owning nothing can write
nothing, whatever it still believes.
"""

from __future__ import annotations

import dataclasses

import coredis

from vpiska.cluster import redis


@dataclasses.dataclass(frozen=True)
class Lease:
    event_id: str
    node_id: str
    epoch: int

    @property
    def value(self) -> str:
        return f"{self.node_id} {self.epoch}"


class Leases:
    """Error handling: every method lets Redis errors and timeouts escape."""

    def __init__(self, client: coredis.Redis[bytes], node_id: str, ttl: float) -> None:
        self._client = client
        self._node_id = node_id
        self._ttl_ms = max(1, int(ttl * 1000))
        self._acquire = client.register_script(redis.ACQUIRE)
        self._renew = client.register_script(redis.RENEW)
        self._release = client.register_script(redis.RELEASE)
        self._raise_epoch = client.register_script(redis.RAISE_EPOCH)

    async def acquire(self, event_id: str) -> Lease | None:
        """The event's lease, now ours with a new epoch; None if another node holds it."""
        epoch: int | None = await self._acquire(
            keys=[redis.lease_key(event_id), redis.epoch_key(event_id)],
            args=[self._node_id, self._ttl_ms])
        return None if epoch is None else Lease(event_id, self._node_id, int(epoch))

    async def renew(self, leases: list[Lease]) -> list[Lease]:
        """Extend `leases`; the ones that are no longer ours (expired and taken, or gone)."""
        if not leases:
            return []
        lost: list[int] = await self._renew(
            keys=[redis.lease_key(lease.event_id) for lease in leases],
            args=[self._ttl_ms, *(lease.value for lease in leases)])
        return [leases[int(position) - 1] for position in lost]

    async def release(self, lease: Lease) -> None:
        await self._release(keys=[redis.lease_key(lease.event_id)], args=[lease.value])

    async def raise_epoch(self, event_id: str, seen: int) -> None:
        """Make the next epoch of `event_id` above `seen` (an epoch the store has claimed)."""
        await self._raise_epoch(keys=[redis.epoch_key(event_id)], args=[seen])

    async def holder(self, event_id: str) -> Lease | None:
        """Who holds the event's lease now, if anyone."""
        value = await self._client.get(redis.lease_key(event_id))
        if value is None:
            return None
        node_id, _, epoch = value.decode().partition(" ")
        return Lease(event_id, node_id, int(epoch))
