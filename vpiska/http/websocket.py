"""`GET /api/v1/websockets/event`: a member's live connection to an event's room.

The handshake is checked before the upgrade (401 token, 400 event id or `since`, 404 unknown or
closed event, 503 failed room). A session is then two tasks in one nursery: the reader turns
client frames into commands, the writer drains the member's outbox to the socket. When either
ends, both end, and the member leaves the room exactly once.

Keep-alive: hypercorn pings every WS_PING_SECONDS; pongs are not visible through ASGI, so the
server drops a peer from which nothing at all (frames or pongs) was read for two intervals
(hypercorn's read_timeout, set in server.py).
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from quart import Quart, Response, websocket

from vpiska.actors import CloseCode, EventSupervisor, Member, Room
from vpiska.actors import frames
from vpiska.actors.commands import Chat, Join, Leave
from vpiska.auth import Identity, Tokens
from vpiska.config import Config
from vpiska.errors import DomainError
from vpiska.http.auth import bearer_token
from vpiska.http.body import id_codes
from vpiska.http import hypercorn_adapter
from vpiska.http.flood import ChatFlood
from vpiska.store import Store

log = logging.getLogger(__name__)

CHAT_PREFIX = "chatMessage"
# Frames one write may carry: large enough to amortise a send, small enough to keep it short.
MAX_WRITE_BATCH = 256


def install_event_socket(app: Quart, config: Config, tokens: Tokens,
                         supervisor: EventSupervisor, store: Store) -> None:
    @app.websocket("/api/v1/websockets/event")
    async def event_socket() -> Any:
        token = websocket.args.get("accessToken") or bearer_token(websocket.headers)
        identity = tokens.read(token) if token else None
        if identity is None:
            return Response("", status=401)
        event_id = websocket.args.get("eventId", "")
        since_text = websocket.args.get("since")
        if id_codes(event_id) or (since_text is not None and not since_text.isdigit()):
            return Response("", status=400)
        room = supervisor.room(event_id)
        if room is None:
            return Response("", status=404)
        if room.failed:
            return Response("", status=503)
        await websocket.accept()
        since = int(since_text) if since_text is not None else None
        await EventSession(config, store, room, identity).run(since)
        return None


class EventSession:
    """One member's socket. Resource handling: the member is handed to the room on join and
    taken back with Leave in a shielded `finally`, so it leaves exactly once even when the
    client vanishes (quart-trio cancels the handler) or the server shuts down."""

    def __init__(self, config: Config, store: Store, room: Room, identity: Identity) -> None:
        self._config = config
        self._store = store
        self._room = room
        self._identity = identity
        self._flood = ChatFlood(config.chat_rate_per_second, config.chat_burst)
        self._close_code: CloseCode | None = None

    async def run(self, since: int | None) -> None:
        member = Member(self._identity, self._config.member_outbox_frames,
                        hypercorn_adapter.sink_of(websocket.scope), hold=since is not None)
        try:
            # Inside the try: the client may vanish while the join is being answered, and
            # the room must then still be told the member left.
            chat_length = await self._room.ask(lambda reply: Join(member, reply))
            assert isinstance(chat_length, int)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, member, since, chat_length, nursery.cancel_scope)
                nursery.start_soon(self._read, nursery.cancel_scope)
        except DomainError:  # closed or failed between the handshake and the join
            self._close_code = CloseCode.NORMAL
        finally:
            member.frames.close()
            with trio.CancelScope(shield=True):
                await self._room.tell(Leave(member))
        if self._close_code is not None:
            with trio.move_on_after(self._config.shutdown_grace_seconds):
                await websocket.close(self._close_code)

    async def _write(self, member: Member, since: int | None, chat_length: int,
                     session: trio.CancelScope) -> None:
        if since is not None:  # the member was joined on hold: catch up, then release it
            if since < chat_length:
                missed = await self._store.chat(self._room.event_id, since)
                for line in missed[: chat_length - since]:
                    await self._send(member, [frames.chat_message(line).wire
                                              if member.sink else
                                              frames.chat_message(line).text])
            member.written(1)
        batch: list[bytes | str] = []
        async for first in member.frames:
            batch.append(first)
            while len(batch) < MAX_WRITE_BATCH:  # everything queued goes out in one send
                try:
                    batch.append(member.frames.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):  # the loop sees the end next
                    break
            if member.kicked:
                break
            await self._send(member, batch)
            member.written(len(batch))
            batch.clear()
        self._end(member.close_code, session)

    @staticmethod
    async def _send(member: Member, batch: list[bytes | str]) -> None:
        if member.sink is not None:
            await member.sink.send(b"".join(batch))  # type: ignore[arg-type]
        else:
            for text in batch:
                await websocket.send(text)

    async def _read(self, session: trio.CancelScope) -> None:
        while True:
            data = await websocket.receive()
            if not isinstance(data, str):
                self._end(CloseCode.UNSUPPORTED_DATA, session)
                return
            prefix, slash, text = data.partition("/")
            if not slash or prefix != CHAT_PREFIX:
                log.debug("unknown client frame ignored", extra={"prefix": prefix[:40]})
                continue
            if len(text) > self._config.max_chat_chars:
                self._flood.drop()
            elif self._flood.admit():
                await self._room.tell(Chat(self._identity, text))
            if self._flood.abusive:
                log.info("chat flood: member disconnected",
                         extra={"event_id": self._room.event_id,
                                "user_id": self._identity.user_id})
                self._end(CloseCode.FLOODING, session)
                return

    def _end(self, code: CloseCode, session: trio.CancelScope) -> None:
        self._close_code = code
        session.cancel()
