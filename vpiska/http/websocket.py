"""`GET /api/v1/websockets/event`: a member's live connection to an event's room.

The handshake is checked before the upgrade (401 token or unknown user, 400 event id or `since`,
404 unknown or closed event, 503 failed room or server shutting down). A session is then a
reader (the session's own task: client frames become commands) and a writer task (the member's
outbox to the socket) in one nursery. When either ends, both end, and the member leaves the room
exactly once.

Back-pressure: a chat line waits for room in the event's inbox, and while it waits nothing more
is read from that socket. A line that cannot enter within ACTOR_REPLY_TIMEOUT_SECONDS closes the
socket with 1013 (try again later): the room is overloaded, and the client is told so.

Keep-alive: hypercorn pings every WS_PING_SECONDS; pongs are not visible through ASGI, so the
server drops a peer from which nothing at all (frames or pongs) was read for two intervals
(hypercorn's read_timeout, set in server.py).
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qs

import trio
from werkzeug.datastructures import Headers

from vpiska import metrics
from vpiska.accounts import Accounts
from vpiska.actors import ChatFlood, CloseCode, Member, frames
from vpiska.actors.commands import Chat, Join, Joined
from vpiska.actors.rooms import RoomHandle, Rooms
from vpiska.auth import Identity
from vpiska.config import Config
from vpiska.errors import DomainError, ErrorCode
from vpiska.http import hypercorn_adapter
from vpiska.http.auth import bearer_token
from vpiska.http.body import id_codes
from vpiska.http.outbox import MAX_WRITE_BATCH, Item, OutboxState, SocketOutbox
from vpiska.http.request_id import name_socket
from vpiska.http.tracing import trace_handshake
from vpiska.store import Store

log = logging.getLogger(__name__)

PATH = "/api/v1/websockets/event"
CHAT_PREFIX = "chatMessage"
# `since`: ASCII digits only (str.isdigit also takes "²" and "٣"), and few enough of them.
SINCE = re.compile(r"[0-9]{1,10}")


class EventSocketEndpoint:
    """The event WebSocket as a plain ASGI app in front of the Quart app.

    Every other scope goes to `fallback`. Serving this one route without Quart saves, per
    socket, a request context, two tasks and a message queue (about a quarter of a socket's
    memory) and most of a handshake's CPU.
    """

    def __init__(self, fallback: Any, config: Config, accounts: Accounts, rooms: Rooms,
                 store: Store) -> None:
        self._fallback = fallback
        self._config = config
        self._accounts = accounts
        self._rooms = rooms
        self._store = store

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket" or scope["path"] != PATH:
            await self._fallback(scope, receive, send)
            return
        accepted = False
        try:
            await receive()  # websocket.connect
            query = parse_qs(scope["query_string"].decode("latin-1"))
            headers = Headers([(k.decode("latin-1"), v.decode("latin-1"))
                               for k, v in scope["headers"]])
            request_id = name_socket(headers)
            token = (query.get("accessToken") or [""])[0] or bearer_token(headers)
            identity = await self._accounts.identify(token) if token else None
            event_id = (query.get("eventId") or [""])[0]
            since_text = (query.get("since") or [None])[0]
            room = None
            if identity is None:
                status = 401
            elif id_codes(event_id) or (since_text is not None
                                        and SINCE.fullmatch(since_text) is None):
                status = 400
            elif (room := await self._rooms.find(event_id)) is None:
                status = 404
            else:
                status = 503 if room.failed or self._rooms.stopping else 101
            if self._config.trace_requests:
                trace_handshake(PATH, query, status)
            if status != 101:
                await _refuse(send, status, [(b"x-request-id", request_id.encode())])
                return
            assert room is not None
            assert identity is not None
            await send({"type": "websocket.accept"})
            accepted = True
            since = int(since_text) if since_text is not None else None
            session = EventSession(self._config, self._store, room, identity, receive, send,
                                   hypercorn_adapter.sink_of(scope))
            await session.run(since)
        except Exception:
            log.exception("websocket session failed", extra={"path": PATH})
            if accepted:
                await send({"type": "websocket.close", "code": CloseCode.INTERNAL_ERROR})
            else:
                await _refuse(send, 500)


async def _refuse(send: Any, status: int, headers: list[tuple[bytes, bytes]] | None = None
                  ) -> None:
    """Answer the upgrade request with a bodiless HTTP status instead of accepting it."""
    await send({"type": "websocket.http.response.start", "status": status,
                "headers": [(b"content-length", b"0"), *(headers or [])]})
    await send({"type": "websocket.http.response.body", "body": b""})


class EventSession:
    """One member's socket: a reader (the session's own task: client frames become commands)
    and a writer task (the outbox to the socket) in one nursery; when either ends, both end.

    Resource handling: the member joins once and leaves exactly once, in a `finally`, also when
    the client vanishes (the handler is cancelled) or the server shuts down; its outbox is
    closed first, so the room never counts a socket that is gone as a slow one.
    """

    def __init__(self, config: Config, store: Store, room: RoomHandle, identity: Identity,
                 receive: Any, send: Any, sink: hypercorn_adapter.DirectSink | None) -> None:
        self._receive_message = receive
        self._send_message = send
        self._sink = sink
        self._config = config
        self._store = store
        self._room = room
        self._identity = identity
        self._flood = ChatFlood(config.chat_rate_per_second, config.chat_burst)
        self._close_code: CloseCode | None = None

    async def run(self, since: int | None) -> None:
        outbox = SocketOutbox(self._config.member_outbox_frames, self._sink,
                              hold=since is not None)
        member = Member(self._identity, outbox)
        try:
            # Inside the try: the client may vanish while the join is being answered, and
            # the room must then still be told the member left.
            joined = await self._room.ask(lambda reply: Join(member, reply))
            assert isinstance(joined, Joined)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, outbox, since, joined.chat_length,
                                   nursery.cancel_scope)
                await self._read(nursery.cancel_scope)  # in this task: one task fewer a socket
        except DomainError as refusal:  # closed, failed or stopped before the join
            if outbox.state is OutboxState.FINISHING:  # the room ended with its Join queued
                self._close_code = outbox.close_code
            elif ErrorCode.INTERNAL_ERROR in refusal.codes:
                self._close_code = CloseCode.INTERNAL_ERROR
            else:
                self._close_code = CloseCode.NORMAL
        finally:
            outbox.close()
            self._room.leave(member)
        if self._close_code is not None:
            with trio.move_on_after(self._config.shutdown_grace_seconds):
                await self._send_message({"type": "websocket.close", "code": self._close_code})

    async def _write(self, outbox: SocketOutbox, since: int | None, chat_length: int,
                     session: trio.CancelScope) -> None:
        if since is not None:  # the member joined on hold: catch up, then release it
            if since < chat_length:
                missed = await self._store.chat(self._room.event_id, since)
                lines = [outbox.form(frames.chat_message(line))
                         for line in missed[: chat_length - since]]
                for start in range(0, len(lines), MAX_WRITE_BATCH):
                    await self._send(lines[start:start + MAX_WRITE_BATCH])
            outbox.release()
        await outbox.write_to(self._send)
        if outbox.state is OutboxState.CLOSED:  # the connection broke under a write
            session.cancel()
        else:  # the room finished or aborted the member
            self._end(outbox.close_code, session)

    async def _send(self, batch: list[Item]) -> None:
        if self._sink is not None:
            # The ignore: an Item is bytes or str, and with a sink it is bytes (outbox.form).
            await self._sink.send(b"".join(batch))  # type: ignore[arg-type]
        else:
            for text in batch:
                await self._send_message({"type": "websocket.send", "text": text})

    async def _read(self, session: trio.CancelScope) -> None:
        while True:
            message = await self._receive_message()
            if message["type"] == "websocket.disconnect":
                session.cancel()
                return
            data = message.get("text")
            if data is None:  # a binary frame
                self._end(CloseCode.UNSUPPORTED_DATA, session)
                return
            prefix, slash, text = data.partition("/")
            if not slash or prefix != CHAT_PREFIX:
                log.debug("unknown client frame ignored", extra={"prefix": prefix[:40]})
                continue
            if len(text) > self._config.max_chat_chars:
                self._flood.drop()
            elif self._flood.admit() and not await self._room.send(Chat(self._identity, text)):
                log.warning("member disconnected: the event's inbox stayed full", extra={
                    "event_id": self._room.event_id, "user_id": self._identity.user_id,
                    "waited_seconds": self._config.actor_reply_timeout_seconds})
                metrics.OVERLOADED_DISCONNECTS.inc()
                self._end(CloseCode.TRY_AGAIN_LATER, session)
                return
            if self._flood.abusive:
                log.info("chat flood: member disconnected",
                         extra={"event_id": self._room.event_id,
                                "user_id": self._identity.user_id})
                metrics.FLOODING_DISCONNECTS.inc()
                self._end(CloseCode.FLOODING, session)
                return

    def _end(self, code: CloseCode, session: trio.CancelScope) -> None:
        self._close_code = code
        session.cancel()
