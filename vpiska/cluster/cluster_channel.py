"""The cluster channel: what every node tells every other, and what it does with their notices.

The map index `events/range` reads is cluster-wide on every node: loaded from the store at
start, then kept current by notices (created, moved, closed) on this channel, and reloaded from
the store when the channel's subscription was renewed after a lost connection (notices may
have been missed). The moves and closes of the rooms owned here are told by their actors
through `MapNotices` (map_notices.py), not from here. The channel also carries the users
count of events owned elsewhere (counted), the host's bans (banned: the node's gateway to the
event refuses the user), deleted accounts (account_deleted: the node forgets the account and
closes its sockets of it) and a node that left (its events go to the nodes designated without
it at once, not after a TTL).

A deleted account's notice must not be lost to a Redis outage, or the account's sockets on
other nodes would stay open for as long as their clients keep them: the node that deleted it
publishes the notice again until Redis takes it, and a node whose subscription was renewed
(it may have missed notices) asks the store about the accounts of its sockets and closes
those of deleted ones.
"""

from __future__ import annotations

import logging
from typing import Protocol, assert_never

import trio

from vpiska.actors import CloseCode, EventSupervisor
from vpiska.cluster import protocol, redis
from vpiska.cluster.bus import Bus
from vpiska.cluster.contained import contained
from vpiska.cluster.membership import Membership
from vpiska.cluster.ownership import Ownership
from vpiska.cluster.protocol import Notice, decode, encode
from vpiska.cluster.routing import Routing
from vpiska.cluster.trouble import Trouble
from vpiska.domain import Coordinates
from vpiska.store import Store

log = logging.getLogger(__name__)

# Between two attempts to publish account_deleted notices Redis did not take.
NOTICE_RETRY_SECONDS = 1.0


class KnownUsers(Protocol):
    def forget(self, user_id: str) -> None:
        """The account was deleted: its tokens must not identify anyone any more."""

    def forget_all(self) -> None:
        """Deletions may have been missed: ask the store again about every account."""


class ClusterMap(Protocol):
    """The map index (vpiska/actors/geo.py) as other nodes' notices change it."""

    def put(self, event_id: str, name: str, coordinates: Coordinates) -> None: ...

    def move(self, event_id: str, coordinates: Coordinates) -> None: ...

    def remove(self, event_id: str) -> None: ...

    def replace(self, events: list[tuple[str, str, Coordinates]]) -> None: ...


class ClusterChannel:
    """Resource handling: notices are published from tasks of `nursery` (the node's) when the
    caller may not wait (`notify_soon`); the map's reload after a renewal too."""

    def __init__(self, *, bus: Bus, index: ClusterMap, store: Store,
                 supervisor: EventSupervisor, membership: Membership, ownership: Ownership,
                 routing: Routing, known_users: KnownUsers | None, nursery: trio.Nursery,
                 unreachable: Trouble) -> None:
        self._bus = bus
        self._index = index
        self._store = store
        self._supervisor = supervisor
        self._membership = membership
        self._ownership = ownership
        self._routing = routing
        # The node's cache of known users (vpiska/accounts.py): it forgets every account
        # deleted anywhere in the cluster, or its tokens would keep working here.
        self.known_users = known_users
        self._nursery = nursery
        self._unreachable = unreachable
        self.counts: dict[str, int] = {}  # usersCount of events owned elsewhere
        # Accounts deleted here whose notice Redis has not taken yet, and whether a task of
        # the node's is publishing them again.
        self._undelivered: set[str] = set()
        self._redelivering = False

    def cluster_message(self, data: bytes) -> None:
        message = decode(data)
        if not isinstance(message, Notice):
            return
        event_id = message.event_id
        match message.op:
            case protocol.Created(name, x, y):
                self._index.put(event_id, name, Coordinates(x, y))
            case protocol.Moved(x, y):
                self._index.move(event_id, Coordinates(x, y))
            case protocol.Closed():
                self._index.remove(event_id)
                self.counts.pop(event_id, None)
                self._ownership.forget_owner(event_id)
            case protocol.AccountDeleted(user_id):
                self.close_account_here(user_id)
            case protocol.Banned(user_id):
                gateway = self._routing.gateways.get(event_id)
                if gateway is not None:
                    gateway.banned.add(user_id)
            case protocol.Counted(count):
                self.counts[event_id] = count
            case protocol.Left(node):
                # Gone now, not at this node's next beat: the events it handed over go to
                # the nodes designated without it, and its sockets (closed) leave the rooms.
                self._membership.left(node)
                self._ownership.node_left(node)
            case protocol.Chat() | protocol.Leave() | protocol.Sync() | protocol.Activate():
                pass  # for an event's owner, on its node's channel
            case op:
                assert_never(op)

    def cluster_renewed(self) -> None:
        if self.known_users is not None:  # an account_deleted notice may have been missed
            self.known_users.forget_all()
        self._nursery.start_soon(contained, "reload the map", self._reload_index)
        self._nursery.start_soon(contained, "close deleted accounts' sockets",
                                 self._close_deleted_accounts)

    async def _reload_index(self) -> None:
        """Notices may have been missed: the store says which events are open."""
        events = await self._store.open_events()
        self._index.replace([(e.id, e.name, e.coordinates) for e in events])

    async def _close_deleted_accounts(self) -> None:
        """account_deleted notices may have been missed: the store says which of the accounts
        with a socket here are gone, and their sockets close (one store lookup per user)."""
        users = self._supervisor.local_users().union(
            *(gateway.users() for gateway in self._routing.gateways.values()))
        gone = [user_id for user_id in sorted(users)
                if await self._store.user_by_id(user_id) is None]
        for user_id in gone:
            self.close_account_here(user_id)
        if gone:
            log.info("sockets of accounts deleted while notices could be missed closed",
                     extra={"accounts": len(gone)})

    async def account_deleted(self, user_id: str) -> None:
        """Close the account's sockets here, then tell every node; if Redis does not take the
        notice now, a task of the node's publishes it again every NOTICE_RETRY_SECONDS until
        it does (for as long as this node runs)."""
        self.close_account_here(user_id)
        if not await self.notify(protocol.AccountDeleted(user_id), ""):
            self._undelivered.add(user_id)
            if not self._redelivering:
                self._redelivering = True
                self._nursery.start_soon(contained, "publish account_deleted notices again",
                                         self._redeliver)

    async def _redeliver(self) -> None:
        try:
            while self._undelivered:
                await trio.sleep(NOTICE_RETRY_SECONDS)
                for user_id in sorted(self._undelivered):
                    if not await self.notify(protocol.AccountDeleted(user_id), ""):
                        break
                    self._undelivered.discard(user_id)
        finally:
            self._redelivering = False

    def close_account_here(self, user_id: str) -> None:
        if self.known_users is not None:
            self.known_users.forget(user_id)
        self._supervisor.close_sockets_of(user_id, CloseCode.ACCOUNT_DELETED)
        for gateway in self._routing.gateways.values():
            gateway.close_user(user_id, CloseCode.ACCOUNT_DELETED)

    def notify_soon(self, op: protocol.ClusterNoticeOp, event_id: str) -> None:
        """Tell every node, from a task of the node's (callers may not wait)."""
        self._nursery.start_soon(contained, f"notify {op.op}", self.notify, op, event_id)

    async def notify(self, op: protocol.ClusterNoticeOp, event_id: str) -> bool:
        """Publish the notice; False (logged by the node's Trouble) if Redis did not take it."""
        try:
            await self._bus.publish(redis.CLUSTER_CHANNEL, encode(Notice(op, event_id)))
        except redis.REDIS_ERRORS as error:
            self._unreachable.failed(error, notice=op.op)
            return False
        self._unreachable.succeeded()
        return True
