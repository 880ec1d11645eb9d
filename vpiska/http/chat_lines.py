"""`events/chat` (the history in pages) and `events/chat/remove` (the host erases a line):
API.md, "Opt-in room features".

Pages are read from the store on whatever node is asked: the store has every line the room
has shown, and a page names its lines by `seq`, so no actor need be asked. Erasing is a change
of the event, so it is the actor's (the owner's, in a cluster), like every other.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from vpiska import wire
from vpiska.accounts import Accounts
from vpiska.actors.commands import RemoveChat
from vpiska.actors.rooms import Rooms, ask_where_it_runs
from vpiska.config import Config
from vpiska.errors import DomainError, ErrorCode
from vpiska.http.auth import caller
from vpiska.http.body import id_codes, json_object, require, text
from vpiska.http.envelope import success
from vpiska.store import Store

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def add_chat_routes(routes: Blueprint, config: Config, accounts: Accounts, rooms: Rooms,
                    store: Store) -> None:
    """Serve the two under `routes` (the events blueprint, `/api/v1/events`)."""

    @routes.post("/chat")
    async def history() -> Any:
        return success(await chat_page(rooms, store,
                                       await json_object(config.max_json_bytes)))

    @routes.post("/chat/remove")
    async def remove() -> Any:
        identity = await caller(accounts)
        data = await json_object(config.max_json_bytes)
        event_id, seq = text(data, "eventId"), data.get("seq")
        require(id_codes(event_id), (not _whole(seq, low=1), ErrorCode.SEQ_INVALID))
        room = await rooms.find(event_id)
        if room is None:
            raise DomainError(ErrorCode.EVENT_NOT_FOUND)
        assert isinstance(seq, int)
        await ask_where_it_runs(rooms, room,
                                lambda reply: RemoveChat(identity.user_id, seq, reply))
        return success(None)


async def chat_page(rooms: Rooms, store: Store, data: dict[str, Any]) -> dict[str, Any]:
    """The `limit` lines before `before` (1-based; default: after the last), oldest first."""
    event_id, limit, before = text(data, "eventId"), data.get("limit", DEFAULT_LIMIT), data.get(
        "before")
    require(id_codes(event_id),
            (not _whole(limit, low=1, high=MAX_LIMIT), ErrorCode.LIMIT_INVALID),
            (before is not None and not _whole(before, low=1), ErrorCode.BEFORE_INVALID))
    if await rooms.find(event_id) is None:
        raise DomainError(ErrorCode.EVENT_NOT_FOUND)
    length = await store.chat_length(event_id)
    stop = length if before is None else min(before - 1, length)  # 0-based, exclusive
    start = max(0, stop - limit)
    lines = await store.chat_slice(event_id, start, stop)
    return {"messages": [wire.chat_json_v2(line, seq)
                         for seq, line in enumerate(lines, start=start + 1)],
            "hasMore": start > 0}


def _whole(value: Any, *, low: int, high: int | None = None) -> bool:
    """Whether `value` is a JSON integer in [low, high] (not a bool, not 2.0, not 1e999)."""
    return type(value) is int and low <= value and (high is None or value <= high)
