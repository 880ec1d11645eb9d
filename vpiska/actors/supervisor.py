"""EventSupervisor: one nursery that owns a task per open event, and restarts crashed ones.

Supervision (OTP style): an actor that raises is logged and started again from the store, with
the same Room, so its members stay connected and its queued commands are still answered. At
most `actor_max_restarts` restarts in `actor_restart_window_seconds`; past that the room fails:
its sockets are closed with 1011, its commands answer InternalError, and the event stays open
in the store, so the next server start serves it again.

On one node (`serve_all`) the supervisor starts a room for every open event in the store and
keeps the map index of open events that `events/range` reads. In a cluster a room is started
here only when this node owns the event (`activate`, with its lease's epoch and a publisher;
vpiska/cluster/ownership.py), the index holds every open event of the cluster, its actors tell
the other nodes of their moves and closes through the map publisher the supervisor was given,
and rooms end when the node hands them over or loses them (the node, told through the `ended`
it activated the room with, releases the lease).

Fencing: an actor whose store write raises StaleEpoch has lost the event to a newer owner
(another node claimed it), and so has one whose lease the node found lost (`fence`). It is not
restarted, since every write of the restarted actor would be refused again: the room ends as
fenced. Its sockets here are closed with 1012 (reconnect: the event is served elsewhere) and
its commands answer InternalError; the other nodes' sockets stay, for the new owner.

Shutdown (`stop`): no new event is opened; every room handles the commands queued before its
Stop, closes its sockets with 1001 (1012 when handing over to other nodes) and ends; `run`
returns when the last room has ended. The server bounds how long that may take
(vpiska/server.py).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from vpiska import metrics
from vpiska.actors.commands import Stop
from vpiska.actors.event import EventActor, Exit
from vpiska.actors.geo import MapIndex, Spot
from vpiska.actors.map_publisher import UNSHARED_MAP, MapPublisher
from vpiska.actors.member import CloseCode
from vpiska.actors.room import Publisher, Room
from vpiska.actors.view import Mirror
from vpiska.config import Config
from vpiska.domain import Coordinates, Event, new_id, utc_now
from vpiska.errors import DomainError, ErrorCode
from vpiska.store import StaleEpoch, Store

log = logging.getLogger(__name__)


class EventSupervisor:
    def __init__(self, store: Store, config: Config, *, serve_all: bool = True,
                 index: MapIndex | None = None,
                 map_publisher: MapPublisher = UNSHARED_MAP) -> None:
        self._store = store
        self._config = config
        self._serve_all = serve_all
        self._rooms: dict[str, Room] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._index = MapIndex() if index is None else index
        self._map_publisher = map_publisher
        self._ended: dict[str, Callable[[str], None]] = {}  # told when an activated room ends
        self._nursery: trio.Nursery | None = None
        self._stopping = trio.Event()
        self._hand_over = False
        self._starting: set[str] = set()  # events of the start whose actor is not made yet
        self.started = trio.Event()  # every room of the start has its actor
        self.ended = trio.Event()  # `run` has returned: every room has ended
        self.restarts = 0  # total actor restarts, for metrics and tests

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Put every open event of the store on the map (and on one node, start its room),
        then supervise until `stop`.

        Resource handling: returns only when every room task has ended.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            events = await self._store.open_events()
            if self._serve_all:
                self._starting = {event.id for event in events}
            for event in events:
                if self._serve_all:
                    self._start(event)
                else:
                    self._index.put(event.id, event.name, event.coordinates)
            if not self._starting:
                self.started.set()
            log.info("open events loaded", extra={"open_events": len(events),
                                                  "rooms_started": len(self._rooms)})
            task_status.started()
            await self._stopping.wait()
        self._nursery = None
        self.ended.set()

    def refuse_new_events(self) -> None:
        """Shutdown has begun: open no new event from now on. The rooms go on until `stop`
        (which the server calls once it has stopped accepting connections); an event created
        in between would only be stopped again."""
        self._stopping.set()

    async def stop(self, *, hand_over: bool = False) -> None:
        """Shutdown: open no new event, and tell every room to stop after what it has queued
        (`hand_over`: to another node's care, see Stop).

        Returns once every room has its Stop; `run` returns once they have all ended (and
        `ended` is set).
        """
        self._hand_over = hand_over
        self._stopping.set()
        async with trio.open_nursery() as nursery:
            for room in list(self._rooms.values()):
                nursery.start_soon(partial(room.stop, hand_over=hand_over))

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def ready(self) -> bool:
        return True  # one node needs nothing but its store, which /readyz pings itself

    @property
    def event_ids(self) -> list[str]:
        """The events that still have a room (for the log of a shutdown that ran out of time)."""
        return list(self._rooms)

    def room(self, event_id: str) -> Room | None:
        return self._rooms.get(event_id)

    async def find(self, event_id: str) -> Room | None:
        """`room`, as vpiska/http asks it of `Rooms` (in a cluster the answer may need Redis)."""
        return self._rooms.get(event_id)

    @property
    def open_events(self) -> int:
        return len(self._rooms)

    async def open_event(self, owner_id: str, name: str, address: str,
                         coordinates: Coordinates) -> Event:
        """Persist a new open event (OwnerAlreadyHasEvent if the owner has one) and start it.

        Error handling: InternalError while the server shuts down: a room started now would
        only be stopped again.
        """
        event = await self.create_event(owner_id, name, address, coordinates)
        self._start(event)
        return event

    async def create_event(self, owner_id: str, name: str, address: str,
                           coordinates: Coordinates) -> Event:
        """Persist a new open event without starting its room (in a cluster, the node that
        owns it starts it). Errors as `open_event`."""
        if self.stopping:
            log.info("event not opened: the server is shutting down",
                     extra={"owner_id": owner_id})
            raise DomainError(ErrorCode.INTERNAL_ERROR)
        event = Event(new_id(), owner_id, name, address, coordinates, utc_now())
        await self._store.add_event(event)
        return event

    async def activate(self, event_id: str, epoch: int, claimant: str, publisher: Publisher,
                       mirror: Mirror, *, ended: Callable[[str], None]) -> Room | None:
        """Start the room of an event this node now owns under `epoch` (its lease's), claimed
        in the store as `claimant`; `ended(event_id)` is called once the room has ended
        (closed, stopped, fenced), on its task.

        The store is claimed for `epoch` first, so from then on no older owner can write; the
        room then says Hello to the other nodes. None if the event is closed or unknown, or if
        the supervisor is stopping. Error handling: StaleEpoch if the store has a newer epoch
        than `epoch`, or this one claimed by another claimant (Redis lost its counters: the caller
        takes an epoch above it).
        """
        if self.stopping or self._nursery is None:
            return None
        event = await self._store.claim_event(event_id, epoch, claimant)
        if event is None or not event.is_open or event_id in self._rooms:
            return self._rooms.get(event_id)
        if self.stopping or self._nursery is None:  # told to stop meanwhile: nothing to start
            return None
        room = Room(event.id, event.owner_id, inbox_size=self._config.actor_inbox_size,
                    reply_timeout=self._config.actor_reply_timeout_seconds, epoch=epoch,
                    claimant=claimant, publisher=publisher, mirror=mirror, banned=event.banned)
        self._rooms[event.id] = room
        self._ended[event.id] = ended
        self._nursery.start_soon(self._supervise, room, event, name=f"event {event.id}")
        return room

    def fence(self, event_id: str) -> None:
        """This node's lease on `event_id` is lost: end its room now, without a last write."""
        scope = self._scopes.get(event_id)
        if scope is not None:
            scope.cancel()

    async def close_account(self, user_id: str) -> None:
        """Close every socket of `user_id` here with 4004: their account was deleted."""
        self.close_sockets_of(user_id, CloseCode.ACCOUNT_DELETED)

    def local_users(self) -> set[str]:
        """The users with a socket on this node to a room that runs here."""
        return {member.identity.user_id for room in self._rooms.values()
                for member in room.local}

    def close_sockets_of(self, user_id: str, code: CloseCode) -> None:
        """Close `user_id`'s sockets on this node with `code`; each leaves its room as a
        closed socket does (only the actor changes the member table)."""
        for room in self._rooms.values():
            for member in list(room.members.get(user_id, ())):
                if member.gateway is None:
                    member.outbox.finish(code)

    def users_count(self, event_id: str) -> int:
        room = self._rooms.get(event_id)
        return 0 if room is None else room.users_count

    def in_range(self, x_low: float, x_high: float, y_low: float, y_high: float) -> list[Spot]:
        return self._index.within(x_low, x_high, y_low, y_high)

    def live_stats(self) -> metrics.LiveStats:
        """What `GET /metrics` reports of the rooms, read when Prometheus scrapes."""
        rooms = self._rooms.values()
        return metrics.LiveStats(
            open_events=len(self._rooms),
            sockets=sum(room.sockets for room in rooms),
            members=sum(room.users_count for room in rooms),
            restarts=self.restarts,
        )

    def _start(self, event: Event) -> None:
        if self._nursery is None:  # run() has returned: the event is served at the next start
            log.warning("event room not started: the supervisor has stopped",
                        extra={"event_id": event.id})
            return
        room = Room(event.id, event.owner_id, inbox_size=self._config.actor_inbox_size,
                    reply_timeout=self._config.actor_reply_timeout_seconds, banned=event.banned)
        self._rooms[event.id] = room
        self._index.put(event.id, event.name, event.coordinates)
        self._nursery.start_soon(self._supervise, room, event, name=f"event {event.id}")
        if self.stopping:  # created while stop() was telling the others
            room.offer(Stop(self._hand_over))  # its inbox is empty: it takes it now

    async def _supervise(self, room: Room, event: Event | None) -> None:
        with trio.CancelScope() as scope:  # cancelled by `fence`
            self._scopes[room.event_id] = scope
            try:
                exit_reason = await self._keep_running(room, event)
            finally:
                del self._scopes[room.event_id]
        if scope.cancelled_caught:
            self._end_fenced(room, "this node's lease was lost")
            return
        if exit_reason is None:
            return  # failed: it stays registered so callers get InternalError
        room.shut(CloseCode.GOING_AWAY if exit_reason is Exit.STOPPED else CloseCode.NORMAL)
        self._forget(room)
        log.info("event room ended", extra=self._about(room) | {"reason": exit_reason.value})

    async def _keep_running(self, room: Room, event: Event | None) -> Exit | None:
        """Run the room's actor, restarting it after a crash; how it ended, or None if it
        failed for good (fenced or past its restart limit)."""
        crashes: collections.deque[float] = collections.deque()
        while True:
            fenced: BaseExceptionGroup[StaleEpoch] | None = None
            try:
                return await self._incarnate(room, event)
            except* StaleEpoch as stale:
                fenced = stale
            except* Exception as failure:
                log.error("event room crashed", exc_info=failure, extra=self._about(room))
            if fenced is not None:
                self._end_fenced(room, str(fenced.exceptions[0]))
                return None
            event = None  # restart from the store
            now = trio.current_time()
            crashes.append(now)
            while crashes[0] < now - self._config.actor_restart_window_seconds:
                crashes.popleft()
            if len(crashes) > self._config.actor_max_restarts:
                room.shut_failed()
                if self._serve_all:
                    self._index.remove(room.event_id)
                log.error("event room failed: restart limit reached; the event stays open in "
                          "the store until the next server start", extra=self._about(room))
                return None
            self.restarts += 1
            log.warning("event room restarting", extra=self._about(room))

    def _end_fenced(self, room: Room, cause: str) -> None:
        """A newer owner has the event: close this node's sockets (1012), and only those."""
        log.warning("event room fenced: a newer owner has claimed the event",
                    extra=self._about(room) | {"cause": cause})
        room.shut_fenced()
        if self._serve_all:
            self._index.remove(room.event_id)  # stays registered: callers get InternalError
        else:
            self._forget(room)  # callers find the new owner

    def _forget(self, room: Room) -> None:
        if self._serve_all:
            self._index.remove(room.event_id)
        del self._rooms[room.event_id]
        ended = self._ended.pop(room.event_id, None)
        if ended is not None:
            ended(room.event_id)

    async def _incarnate(self, room: Room, event: Event | None) -> Exit:
        try:
            if room.epoch is not None:  # claimed again: a restart must not outlive its lease
                assert room.claimant is not None, "an owned room knows its claimant"
                event = await self._store.claim_event(room.event_id, room.epoch, room.claimant)
            elif event is None:
                event = await self._store.event(room.event_id)
            if event is None or not event.is_open:
                return Exit.CLOSED
            chat_length = await self._store.chat_length(room.event_id)
            actor = EventActor(room, event, chat_length, self._store, self._index,
                               self._config, epoch=room.epoch, map_publisher=self._map_publisher)
        finally:
            self._made(room)
        return await actor.run()

    def _made(self, room: Room) -> None:
        """`room`'s actor is made, or will not be; once that holds for every room of the start,
        `started` is set."""
        if self._starting:
            self._starting.discard(room.event_id)
            if not self._starting:
                self.started.set()

    @staticmethod
    def _about(room: Room) -> dict[str, Any]:
        return {"event_id": room.event_id, "users_count": room.users_count}
