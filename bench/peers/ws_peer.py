"""Reference peer 1: vpiska's room protocol, minimally, on `websockets` (asyncio).

It answers the same URL (`/api/v1/websockets/event?accessToken=…&eventId=…`), checks the token
as vpiska does (PyJWT, HS256, iss/aud/exp required) before the upgrade, and broadcasts every
`chatMessage/<text>` of a member to the member's room as `chatMessage/{json}` with the same
JSON keys, using the library's own `broadcast()` helper. Nothing else: no store, no
membership frames, no flood control. That is the point of a peer: the cost of the bare
protocol on a well-known library, to put vpiska's figures in proportion.

Usage: PORT=… JWT_KEY=… python ws_peer.py (listens on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
from collections import defaultdict
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import jwt
from websockets.asyncio.server import ServerConnection, broadcast, serve

PATH = "/api/v1/websockets/event"
CHAT = "chatMessage/"
KEY = os.environ["JWT_KEY"]
encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
rooms: dict[str, set[ServerConnection]] = defaultdict(set)
members: dict[ServerConnection, tuple[str, dict[str, str]]] = {}


def check(connection: ServerConnection, request):  # type: ignore[no-untyped-def]
    """Refuse a bad path (404) or token (401) before the upgrade; remember who is joining."""
    url = urlsplit(request.path)
    if url.path != PATH:
        return connection.respond(HTTPStatus.NOT_FOUND, "")
    query = parse_qs(url.query)
    try:
        claims = jwt.decode(query.get("accessToken", [""])[0], KEY, algorithms=["HS256"],
                            issuer="VpiskaServer", audience="VpiskaClient",
                            options={"require": ["exp", "iss", "aud"]})
    except jwt.InvalidTokenError:
        return connection.respond(HTTPStatus.UNAUTHORIZED, "")
    event_id = query.get("eventId", [""])[0]
    if not event_id:
        return connection.respond(HTTPStatus.BAD_REQUEST, "")
    sender = {"userId": claims["ID"], "userName": claims["Name"],
              "userImageId": claims.get("ImageID", "")}
    members[connection] = (event_id, sender)
    return None


async def session(connection: ServerConnection) -> None:
    event_id, sender = members[connection]
    room = rooms[event_id]
    room.add(connection)
    try:
        async for data in connection:
            if isinstance(data, str) and data.startswith(CHAT):
                broadcast(room, CHAT + encode({**sender, "message": data[len(CHAT):]}))
    finally:
        room.discard(connection)
        del members[connection]
        if not room:
            del rooms[event_id]


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve(session, "127.0.0.1", int(os.environ["PORT"]), process_request=check,
                     compression=None, backlog=1024):
        await stop.wait()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main())
