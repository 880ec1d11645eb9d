"""`POST /api/v1/events/members/remove`: the host takes a member out of the event, for now or
for as long as it is open (API.md, "Opt-in room features": "The host in charge").

One command to the event's actor, like every events endpoint: the actor checks the caller owns
the event, stores the ban, and closes the member's sockets on every node with 4003.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from vpiska.accounts import Accounts
from vpiska.actors.commands import RemoveMember
from vpiska.actors.rooms import Rooms, ask_where_it_runs
from vpiska.config import Config
from vpiska.errors import DomainError, ErrorCode
from vpiska.http.auth import caller
from vpiska.http.body import id_codes, json_object, require, text
from vpiska.http.envelope import success


def member_removal_routes(config: Config, accounts: Accounts, rooms: Rooms) -> Blueprint:
    routes = Blueprint("member_removal", __name__, url_prefix="/api/v1/events")

    @routes.post("/members/remove")
    async def remove_member() -> Any:
        identity = await caller(accounts)
        data = await json_object(config.max_json_bytes)
        event_id, user_id = text(data, "eventId"), text(data, "userId")
        ban = data.get("ban")
        # Strictly a JSON boolean: a ban is not undone, so "false" or 1 must not guess.
        require(id_codes(event_id), id_codes(user_id),
                (ban is not None and type(ban) is not bool, ErrorCode.BAN_INVALID))
        room = await rooms.find(event_id)
        if room is None:
            raise DomainError(ErrorCode.EVENT_NOT_FOUND)
        await ask_where_it_runs(
            rooms, room,
            lambda reply: RemoveMember(identity.user_id, user_id, ban is True, reply))
        return success(None)

    return routes
