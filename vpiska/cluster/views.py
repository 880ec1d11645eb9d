"""`events/get` of an event owned elsewhere: the view its owner's actor keeps in Redis.

Why: a node asked for an event owned elsewhere used to ask the owner and wait for its answer.
Under load that answer waited on ~10 turns of the owner's busy event loop, and two nodes
served one event's `events/get` at 1.4× one node. A read from Redis waits on Redis alone.

Why it answers as the owner would, as on one node (a read sees every change acknowledged
before it began): the owner's actor writes the view before anyone can learn of a change
(vpiska/actors/view.py), and a reader takes the lease, the view and the chat lines in one
atomic step. It uses the view only if the view was written under the epoch of the lease held
at that moment. A new owner writes its view under its own epoch before it answers anything.
Until then, and whenever there is no lease (expired, released, a closed event), the reader asks
the owner as before. Writes are fenced like the store's: only the event's current epoch
writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime
from typing import Any

import coredis
import trio

from vpiska.actors import EventView
from vpiska.cluster import redis
from vpiska.cluster.trouble import Trouble
from vpiska.domain import Coordinates, Event, EventMedia
from vpiska.store import StaleEpoch
from vpiska.wire import event_json

# Between tries to write a view while Redis does not answer.
RETRY_SECONDS = 0.1
# Views read in one Redis call at most.
MAX_READ_BATCH = 256

log = logging.getLogger(__name__)


def view_value(view: EventView) -> dict[str, Any]:
    """`view` as JSON values; `chat` is the list of line texts, or None."""
    return {"event": event_json(view.event, view.users_count, []), "open": view.event.is_open,
            "created_at": view.event.created_at.isoformat(), "chat_length": view.chat_length,
            "chat": None if view.chat is None else list(view.chat)}


def view_of(value: dict[str, Any]) -> EventView:
    """The EventView that `view_value` gave `value` for."""
    shown = value["event"]
    event = Event(
        id=shown["id"], owner_id=shown["ownerId"], name=shown["name"],
        address=shown["address"],
        coordinates=Coordinates(float(shown["coordinates"]["x"]),
                                float(shown["coordinates"]["y"])),
        created_at=datetime.fromisoformat(value["created_at"]), is_open=bool(value["open"]),
        media=tuple(EventMedia(m["id"], m["contentType"]) for m in shown["media"]))
    chat = value.get("chat")
    return EventView(event, int(shown["usersCount"]), int(value["chat_length"]),
                     None if chat is None else tuple(str(line) for line in chat))


@dataclasses.dataclass(eq=False)
class _Reads:
    """Views asked for while the reads before them were on their way: one Redis call."""

    event_ids: list[str] = dataclasses.field(default_factory=list)
    views: dict[str, EventView | None] = dataclasses.field(default_factory=dict)
    done: trio.Event = dataclasses.field(default_factory=trio.Event)


class ViewMirror:
    """The `Mirror` of vpiska/actors for every room this node owns, and the reader of the
    others' views.

    Resource handling: `run` is the reader task (in the node's nursery); reads wait for it.
    Reads of many events go to Redis together: asked one by one, coredis' own work on each
    call cost a node with half its requests for events owned elsewhere a fifth of its time.
    """

    def __init__(self, client: coredis.Redis[bytes], unreachable: Trouble) -> None:
        self._show = client.register_script(redis.SHOW_VIEW)
        self._read = client.register_script(redis.READ_VIEWS)
        self._unreachable = unreachable
        self._gathering: list[_Reads] = []
        self._wake = trio.Event()

    async def show(self, epoch: int, view: EventView, known_lines: int) -> None:
        event_id = view.event.id
        if not view.event.is_open:
            args: list[str | int] = [epoch, "", 0]
        else:
            head = view_value(view) | {"epoch": epoch, "chat": view.chat is not None}
            kept = 0 if view.chat is None else known_lines
            lines = [] if view.chat is None else list(view.chat[kept:])
            args = [epoch, json.dumps(head, separators=(",", ":")), kept, *lines]
        keys = [redis.epoch_key(event_id), redis.view_key(event_id), redis.chat_key(event_id)]
        while True:
            try:
                written: list[Any] = await self._show(keys=keys, args=args)
                break
            except redis.REDIS_ERRORS as error:
                self._unreachable.failed(error)
                await trio.sleep(RETRY_SECONDS)
        self._unreachable.succeeded()
        if int(written[0]) != 1:
            raise StaleEpoch(event_id, epoch, int(written[1]))

    async def run(self) -> None:
        """The reader: each round reads, in one call per batch, what was asked during the
        last."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            gathered, self._gathering = self._gathering, []
            for reads in gathered:
                try:
                    await self._read_all(reads)
                finally:
                    reads.done.set()

    async def read(self, event_id: str) -> EventView | None:
        """The event as its owner's actor shows it now; None when the mirror cannot say so
        (no lease, a view of another epoch, Redis unreachable): then ask the owner."""
        if not self._gathering or len(self._gathering[-1].event_ids) >= MAX_READ_BATCH:
            self._gathering.append(_Reads())
            self._wake.set()
        reads = self._gathering[-1]
        reads.event_ids.append(event_id)
        await reads.done.wait()
        return reads.views.get(event_id)

    async def _read_all(self, reads: _Reads) -> None:
        event_ids = list(dict.fromkeys(reads.event_ids))
        keys = [key for event_id in event_ids for key in (
            redis.lease_key(event_id), redis.view_key(event_id), redis.chat_key(event_id))]
        try:
            found: list[Any] = await self._read(keys=keys)
        except redis.REDIS_ERRORS:
            return  # every one of them asks its owner
        for n, event_id in enumerate(event_ids):
            try:
                reads.views[event_id] = _view_found(*found[3 * n: 3 * n + 3])
            except (ValueError, KeyError, TypeError) as error:  # not a view of ours
                log.warning("event view unreadable", extra={"event_id": event_id,
                                                            "cause": repr(error)})


def _view_found(lease: bytes | None, head: bytes | None, chat: list[bytes]) -> EventView | None:
    """The view read, if it is the one of the lease's epoch."""
    if lease is None or head is None:
        return None
    value = json.loads(head)
    if str(value["epoch"]) != lease.decode().partition(" ")[2]:
        return None
    if value["chat"] and len(chat) != value["chat_length"]:
        return None  # lines gone (evicted?): the owner knows
    value["chat"] = [line.decode() for line in chat] if value["chat"] else None
    return view_of(value)
