"""`/api/v1/events/*`: each request becomes one command to the event's actor.

Creation goes through `Rooms` (which starts the actor, here or on the node that owns it) and
`events/range` reads its map index; nothing here keeps state of its own.
"""

from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint, request

from vpiska.accounts import Accounts
from vpiska.actors import EventView
from vpiska.actors.commands import AddMedia, Close, Members, RemoveMedia, Snapshot, Update
from vpiska.actors.presence import users_text
from vpiska.actors.rooms import RoomHandle, Rooms, ask_where_it_runs
from vpiska.config import Config
from vpiska.domain import EventMedia
from vpiska.errors import DomainError, ErrorCode
from vpiska.http.auth import caller
from vpiska.http.body import coordinates, id_codes, json_object, number, require, text
from vpiska.http.chat_lines import add_chat_routes
from vpiska.http.envelope import answer, success, success_body, success_text, success_text_body
from vpiska.http.json_routes import JsonHandler, RequestScope
from vpiska.http.multipart import read_multipart
from vpiska.media import MediaLibrary
from vpiska.store import Store
from vpiska.wire import event_json, event_text, spot_text


def events_routes(config: Config, accounts: Accounts, rooms: Rooms, store: Store,
                  media: MediaLibrary) -> Blueprint:
    routes = Blueprint("events", __name__, url_prefix="/api/v1/events")

    async def body() -> dict[str, Any]:
        return await json_object(config.max_json_bytes)

    async def room_of(event_id: str) -> RoomHandle:
        room = await rooms.find(event_id)
        if room is None:
            raise DomainError(ErrorCode.EVENT_NOT_FOUND)
        return room

    @routes.post("/create")
    async def create() -> Any:
        identity = await caller(accounts)
        data = await body()
        name, address, where = text(data, "name"), text(data, "address"), coordinates(data)
        require((not name, ErrorCode.NAME_IS_EMPTY), (not address, ErrorCode.ADDRESS_IS_EMPTY),
                (where is None, ErrorCode.COORDINATES_IS_EMPTY))
        assert where is not None
        event = await rooms.open_event(identity.user_id, name, address, where)
        return success(event_json(event, 0, []))

    get_event, events_in_range = event_getter(rooms, store), range_finder(rooms)

    @routes.post("/get")
    async def get() -> Any:
        return answer(await get_event(await body(), request.scope))

    @routes.post("/range")
    async def in_range() -> Any:
        return answer(await events_in_range(await body(), request.scope))

    @routes.post("/members")
    async def members() -> Any:
        event_id = text(await body(), "eventId")
        require(id_codes(event_id))
        present = await ask_where_it_runs(rooms, await room_of(event_id), Members)
        assert isinstance(present, list)
        return success_text(users_text(present))

    @routes.post("/update")
    async def update() -> Any:
        identity = await caller(accounts)
        data = await body()
        event_id, address, where = text(data, "eventId"), text(data, "address"), coordinates(data)
        require(id_codes(event_id), (not address, ErrorCode.ADDRESS_IS_EMPTY),
                (where is None, ErrorCode.COORDINATES_IS_EMPTY))
        assert where is not None
        room = await room_of(event_id)
        await ask_where_it_runs(
            rooms, room, lambda reply: Update(identity.user_id, address, where, reply))
        return success(None)

    @routes.post("/close")
    async def close() -> Any:
        identity = await caller(accounts)
        event_id = text(await body(), "eventId")
        require(id_codes(event_id))
        await ask_where_it_runs(rooms, await room_of(event_id),
                                lambda reply: Close(identity.user_id, reply))
        return success(None)

    @routes.post("/media/add")
    async def add_media() -> Any:
        identity = await caller(accounts)
        with await read_multipart("media", config.max_upload_bytes, media.spool_dir) as form:
            event_id = form.fields.get("eventId", "")
            require(id_codes(event_id))
            room = await room_of(event_id)
            if room.owner_id != identity.user_id:  # checked before the upload is stored
                raise DomainError(ErrorCode.USER_IS_NOT_OWNER)
            stored = await media.add(form.file())
        attached = EventMedia(stored.id, stored.content_type)
        await ask_where_it_runs(
            rooms, room, lambda reply: AddMedia(identity.user_id, attached, reply))
        return success(None)

    @routes.post("/media/remove")
    async def remove_media() -> Any:
        identity = await caller(accounts)
        data = await body()
        event_id, media_id = text(data, "eventId"), text(data, "mediaId")
        require(id_codes(event_id), id_codes(media_id))
        room = await room_of(event_id)
        # The room detaches it (stored, then mediaRemoved/), then its record and bytes go
        # (MediaLibrary.discard). Shielded, each ask bounded by the room's reply deadline (at
        # most MOVED_ASKS of them, if the event moves meanwhile): once asked, the room may
        # detach it whether or not the client waits for the answer.
        with trio.CancelScope(shield=True):
            await ask_where_it_runs(
                rooms, room, lambda reply: RemoveMedia(identity.user_id, media_id, reply))
            await media.discard(media_id)
        return success(None)

    add_chat_routes(routes, config, accounts, rooms, store)
    return routes


def json_routes(rooms: Rooms, store: Store) -> dict[str, JsonHandler]:
    """The endpoints served in front of Quart (vpiska/http/json_routes.py), by path."""
    return {"/api/v1/events/get": event_getter(rooms, store),
            "/api/v1/events/range": range_finder(rooms)}


def event_getter(rooms: Rooms, store: Store) -> JsonHandler:
    async def get(data: dict[str, Any], _: RequestScope) -> str:
        event_id = text(data, "eventId")
        require(id_codes(event_id))
        room = await rooms.find(event_id)
        if room is None:
            raise DomainError(ErrorCode.EVENT_NOT_FOUND)
        view = await ask_where_it_runs(rooms, room, Snapshot)
        assert isinstance(view, EventView)
        if view.chat is not None:  # the actor holds the chat: no store call at all
            return success_text_body(event_text(view.event, view.users_count, view.chat))
        chat = await store.chat(event_id)
        return success_body(event_json(view.event, view.users_count, chat[: view.chat_length]))

    return get


def range_finder(rooms: Rooms) -> JsonHandler:
    async def in_range(data: dict[str, Any], _: RequestScope) -> str:
        width, height = number(data, "horizontalRange"), number(data, "verticalRange")
        centre = coordinates(data)
        require((width is None, ErrorCode.HORIZONTAL_RANGE_IS_EMPTY),
                (height is None, ErrorCode.VERTICAL_RANGE_IS_EMPTY),
                (centre is None, ErrorCode.COORDINATES_IS_EMPTY))
        assert width is not None
        assert height is not None
        assert centre is not None
        spots = rooms.in_range(centre.x - width / 2, centre.x + width / 2,
                               centre.y - height / 2, centre.y + height / 2)
        entries = []
        for spot in spots:
            head, tail = spot_text(spot.event_id, spot.name, spot.coordinates.x,
                                   spot.coordinates.y)
            entries.append(f"{head}{rooms.users_count(spot.event_id)}{tail}")
        return success_text_body(f"[{','.join(entries)}]")

    return in_range
