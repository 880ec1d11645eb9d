"""EventSupervisor: one nursery that owns a task per open event, and restarts crashed ones.

Supervision (OTP style): an actor that raises is logged and started again from the store, with
the same Room, so its members stay connected and its queued commands are still answered. At
most `actor_max_restarts` restarts in `actor_restart_window_seconds`; past that the room fails:
its sockets are closed with 1011, its commands answer InternalError, and the event stays open
in the store, so the next server start serves it again.

Fencing: an actor whose store write raises StaleEpoch has lost the event to a newer owner (another
node claimed it). It is not restarted, since every write of the restarted actor would be refused
again: the room ends as fenced. Its sockets are closed with 1012 (reconnect: the event is served
elsewhere) and its commands answer InternalError. Actors run unfenced here (epoch None) until
the cluster code passes its lease's epoch.

The supervisor also keeps the map index of open events that `events/range` reads.

Shutdown (`stop`): no new event is opened; every room handles the commands queued before its
Stop, closes its sockets with 1001 and ends; `run` returns when the last room has ended. The
server bounds how long that may take (vpiska/server.py).
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import trio

from vpiska import metrics
from vpiska.actors.commands import Stop
from vpiska.actors.event import EventActor, Exit
from vpiska.actors.geo import MapIndex, Spot
from vpiska.actors.member import CloseCode
from vpiska.actors.room import Room
from vpiska.config import Config
from vpiska.domain import Coordinates, Event, new_id, utc_now
from vpiska.errors import DomainError, ErrorCode
from vpiska.store import StaleEpoch, Store

log = logging.getLogger(__name__)


class EventSupervisor:
    def __init__(self, store: Store, config: Config) -> None:
        self._store = store
        self._config = config
        self._rooms: dict[str, Room] = {}
        self._index = MapIndex()
        self._nursery: trio.Nursery | None = None
        self._stopping = trio.Event()
        self.restarts = 0  # total actor restarts, for metrics and tests

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start a room for every open event in the store, then supervise until `stop`.

        Resource handling: returns only when every room task has ended.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            events = await self._store.open_events()
            for event in events:
                self._start(event)
            log.info("event rooms started", extra={"open_events": len(events)})
            task_status.started()
            await self._stopping.wait()
        self._nursery = None

    async def stop(self) -> None:
        """Shutdown: open no new event, and tell every room to stop after what it has queued.

        Returns once every room has its Stop; `run` returns once they have all ended.
        """
        self._stopping.set()
        async with trio.open_nursery() as nursery:
            for room in list(self._rooms.values()):
                nursery.start_soon(self._stop_room, room)

    @staticmethod
    async def _stop_room(room: Room) -> None:
        try:
            await room.inbox.send(Stop())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # ended or failed already

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

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
        if self.stopping:
            log.info("event not opened: the server is shutting down",
                     extra={"owner_id": owner_id})
            raise DomainError(ErrorCode.INTERNAL_ERROR)
        event = Event(new_id(), owner_id, name, address, coordinates, utc_now())
        await self._store.add_event(event)
        self._start(event)
        return event

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
                    reply_timeout=self._config.actor_reply_timeout_seconds)
        self._rooms[event.id] = room
        self._index.put(event.id, event.name, event.coordinates)
        self._nursery.start_soon(self._supervise, room, event, name=f"event {event.id}")
        if self.stopping:  # created while stop() was telling the others
            room.inbox.send_nowait(Stop())

    async def _supervise(self, room: Room, event: Event | None) -> None:
        crashes: collections.deque[float] = collections.deque()
        exit_reason = "closed"
        while True:
            crashed = False
            fenced: BaseExceptionGroup[StaleEpoch] | None = None
            try:
                exit_reason = (await self._incarnate(room, event)).value
            except* StaleEpoch as stale:
                fenced = stale
            except* Exception as failure:
                crashed = True
                log.error("event room crashed", exc_info=failure, extra=self._about(room))
            if fenced is not None:
                self._end_fenced(room, fenced)
                return  # like a failed room, it stays registered so callers get InternalError
            if not crashed:
                break
            event = None  # restart from the store
            now = trio.current_time()
            crashes.append(now)
            while crashes[0] < now - self._config.actor_restart_window_seconds:
                crashes.popleft()
            if len(crashes) > self._config.actor_max_restarts:
                room.failed = True
                room.shut(CloseCode.INTERNAL_ERROR)
                self._index.remove(room.event_id)
                log.error("event room failed: restart limit reached; the event stays open in "
                          "the store until the next server start", extra=self._about(room))
                return  # a failed room stays registered so callers get InternalError
            self.restarts += 1
            log.warning("event room restarting", extra=self._about(room))
        room.shut(CloseCode.GOING_AWAY if exit_reason == Exit.STOPPED.value else CloseCode.NORMAL)
        self._index.remove(room.event_id)
        del self._rooms[room.event_id]
        log.info("event room ended", extra=self._about(room) | {"reason": exit_reason})

    def _end_fenced(self, room: Room, stale: BaseExceptionGroup[StaleEpoch]) -> None:
        log.warning("event room fenced: a newer owner has claimed the event",
                    extra=self._about(room) | {"cause": str(stale.exceptions[0])})
        room.failed = True
        room.shut(CloseCode.SERVICE_RESTART)
        self._index.remove(room.event_id)

    async def _incarnate(self, room: Room, event: Event | None) -> Exit:
        if event is None:
            event = await self._store.event(room.event_id)
            if event is None or not event.is_open:
                return Exit.CLOSED
        chat_length = await self._store.chat_length(room.event_id)
        actor = EventActor(room, event, chat_length, self._store, self._index, self._config)
        return await actor.run()

    @staticmethod
    def _about(room: Room) -> dict[str, Any]:
        return {"event_id": room.event_id, "users_count": room.users_count}
