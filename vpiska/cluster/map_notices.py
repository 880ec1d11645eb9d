"""A cluster node's map publisher: the moves and closes its rooms make, told to every node.

Each node answers `events/range` from a map index of its own (vpiska/actors/geo.py). The actor
that moves or closes its event calls `moved`/`closed` here on its own task, which must never
wait on Redis: the notices queue, and one sender task (`run`) publishes them on the cluster
channel in the order they were made, so every node sees an event move before it closes.

Redis pub/sub is at most once: a notice Redis cannot take is dropped (logged once per outage),
as one lost on the way would be. A node whose subscription was renewed reloads its map from the
store (node.py): the store, not Redis, is the record.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from vpiska.cluster import protocol, redis
from vpiska.cluster.protocol import Notice, encode
from vpiska.cluster.trouble import Trouble
from vpiska.domain import Coordinates

log = logging.getLogger(__name__)

# Notices waiting for Redis: past this, new ones are dropped (and logged) rather than held in
# memory while Redis is away. Owners move and close events by hand: a few a second at most.
MAX_QUEUED = 10_000


class Publishing(Protocol):
    """What the notices need of the node's bus (vpiska/cluster/bus.py)."""

    async def publish(self, channel: str, data: bytes) -> int: ...


class MapNotices:
    """The `MapPublisher` (vpiska/actors/map_publisher.py) of a cluster node.

    Resource handling: `run` is the sender and returns only when cancelled; what is still
    queued then is lost, as a notice lost in Redis would be.
    """

    def __init__(self, bus: Publishing) -> None:
        self._bus = bus
        self._queue, self._queued = trio.open_memory_channel[Notice](MAX_QUEUED)
        self._dropping = False
        self._unpublished = Trouble(log, "map notices not published: Redis unreachable")

    def moved(self, event_id: str, coordinates: Coordinates) -> None:
        self._tell(Notice(protocol.Moved(coordinates.x, coordinates.y), event_id))

    def closed(self, event_id: str) -> None:
        self._tell(Notice(protocol.Closed(), event_id))

    def _tell(self, notice: Notice) -> None:
        try:
            self._queue.send_nowait(notice)
        except trio.WouldBlock:
            if not self._dropping:
                log.warning("map notices dropped: Redis is not taking them fast enough",
                            extra={"queued": MAX_QUEUED, "event_id": notice.event_id})
                self._dropping = True

    async def run(self) -> None:
        """Publish the queued notices, one at a time, in order."""
        async for notice in self._queued:
            try:
                await self._bus.publish(redis.CLUSTER_CHANNEL, encode(notice))
            except redis.REDIS_ERRORS as error:
                self._unpublished.failed(error, notice=notice.op.op)
            else:
                self._unpublished.succeeded()
            if self._dropping and not self._queued.statistics().current_buffer_used:
                self._dropping = False
