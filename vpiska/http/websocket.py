"""`GET /api/v1/websockets/event`: a member's live connection to an event's room.

The handshake is checked before the upgrade (401 token or unknown user, 400 event id, `since`
or `v`, 404 unknown or closed event, 403 a user the host banned from it, 503 failed room or
server shutting down). A session is then a reader (the session's own task: client frames become
commands) and, while the member's outbox has something to send, a writer. When either ends the
session, both end, and the member leaves the room exactly once.

Back-pressure: a chat line waits for room in the event's inbox, and while it waits nothing more
is read from that socket. A line that cannot enter within ACTOR_REPLY_TIMEOUT_SECONDS closes the
socket with 1013 (try again later): the room is overloaded, and the client is told so.

Keep-alive: the server pings every WS_PING_SECONDS (the transport's pinger, or hypercorn's
task); pongs are not visible through ASGI, so the server drops a peer from which nothing at all
(frames or pongs) was read for two intervals (hypercorn's read_timeout, set in server.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import parse_qs

import trio

from vpiska import metrics
from vpiska.accounts import Accounts
from vpiska.actors import ChatFlood, CloseCode, Member, OutboxClosed, OutboxFull
from vpiska.actors import lines as chat_lines
from vpiska.actors.commands import Chat, Join, Joined
from vpiska.actors.rooms import RoomHandle, Rooms
from vpiska.config import Config
from vpiska.domain import Identity
from vpiska.errors import DomainError, ErrorCode, RoomMoved
from vpiska.http.auth import bearer_token
from vpiska.http.body import id_codes
from vpiska.http.outbox import MAX_WRITE_BATCH, Item, OutboxState, SocketOutbox
from vpiska.http.request_id import name_socket
from vpiska.http.tracing import trace_handshake
from vpiska.sink import Sink, sink_of
from vpiska.store import Store

log = logging.getLogger(__name__)

PATH = "/api/v1/websockets/event"
CHAT_PREFIX = "chatMessage"
# `since`: ASCII digits only (str.isdigit also takes "²" and "٣"), and few enough of them.
SINCE = re.compile(r"[0-9]{1,10}")
# `v`: the protocol the socket speaks (API.md, "Opt-in room features"); absent is 1.
VERSIONS = {"1": 1, "2": 2}
# The reason sent with a close code whose meaning a client shows its user.
CLOSE_REASONS = {CloseCode.REMOVED: "removed by the host",
                 CloseCode.ACCOUNT_DELETED: "account deleted"}


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

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        # Not a coroutine itself: nothing of this layer stays in memory while a socket lives.
        if scope["type"] != "websocket" or scope["path"] != PATH:
            return cast(Awaitable[None], self._fallback(scope, receive, send))
        return self._serve(scope, receive, send)

    async def _serve(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        accepted = False
        try:
            member = await self._handshake(scope, receive, send)
            if member is None:
                return
            await send({"type": "websocket.accept"})
            accepted = True
            room, identity, since, version = member
            sink = sink_of(scope)  # after the accept: the adapter's Sink comes with it
            # The request's head (its headers, the query string with its token) is not kept
            # for the socket's life: the transport lets go of the scope too.
            del scope, member
            await EventSession(self._config, self._store, room, identity, receive, send,
                               sink, since, version).run()
        except Exception:
            log.exception("websocket session failed", extra={"path": PATH})
            if accepted:
                await send({"type": "websocket.close", "code": CloseCode.INTERNAL_ERROR})
            else:
                await _refuse(send, 500)

    async def _handshake(self, scope: dict[str, Any], receive: Any, send: Any
                         ) -> tuple[RoomHandle, Identity, int | None, int] | None:
        """The room, member, `since` and protocol version of an acceptable handshake; None
        once a refusal has been answered. (Its own function: what the handshake needed is freed
        before the session starts.)"""
        await receive()  # websocket.connect
        query = parse_qs(scope["query_string"].decode("latin-1"))
        offered_id = authorization = None  # the first of each, as werkzeug's Headers.get
        for name, value in scope["headers"]:  # names are lowercase in ASGI
            if name == b"x-request-id" and offered_id is None:
                offered_id = value.decode("latin-1")
            elif name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
        request_id = name_socket(offered_id or "")
        token = (query.get("accessToken") or [""])[0] or bearer_token(authorization or "")
        identity = await self._accounts.identify(token) if token else None
        event_id = (query.get("eventId") or [""])[0]
        since_text = (query.get("since") or [None])[0]
        version = VERSIONS.get((query.get("v") or ["1"])[0])
        room = None
        if identity is None:
            status = 401
        elif id_codes(event_id) or version is None or (
                since_text is not None and SINCE.fullmatch(since_text) is None):
            status = 400
        elif (room := await self._rooms.find(event_id)) is None:
            status = 404
        elif identity.user_id in room.banned:
            status = 403
        else:
            status = 503 if room.failed or self._rooms.stopping else 101
        if self._config.trace_requests:
            trace_handshake(PATH, query, status)
        if status != 101:
            await _refuse(send, status, [(b"x-request-id", request_id.encode())])
            return None
        assert room is not None
        assert identity is not None
        assert version is not None
        return room, identity, int(since_text) if since_text is not None else None, version


async def _refuse(send: Any, status: int, headers: list[tuple[bytes, bytes]] | None = None
                  ) -> None:
    """Answer the upgrade request with a bodiless HTTP status instead of accepting it."""
    await send({"type": "websocket.http.response.start", "status": status,
                "headers": [(b"content-length", b"0"), *(headers or [])]})
    await send({"type": "websocket.http.response.body", "body": b""})


class EventSession:
    """One member's socket: a reader (the session's own task: client frames become commands)
    and, while there is something to write, a writer (the outbox to the socket); when either
    ends the session, both end.

    With a Sink (vpiska/sink.py) the writer is a task of the connection, started only when the
    outbox has something queued or its end to tell (an idle member has no task besides its reader),
    and ended with the session. Without one (plain hypercorn) every frame is queued, and writers run
    in the session's nursery.

    Resource handling: the member joins once and leaves exactly once, in a `finally`, also when
    the client vanishes (the handler is cancelled) or the server shuts down; its outbox is
    closed first, so the room never counts a socket that is gone as a slow one.
    """

    def __init__(self, config: Config, store: Store, room: RoomHandle, identity: Identity,
                 receive: Any, send: Any, sink: Sink | None,
                 since: int | None, version: int = 1) -> None:
        self._receive_message = receive
        self._send_message = send
        self._sink = sink
        self._config = config
        self._store = store
        self._room = room
        self._identity = identity
        self._since = since
        self._version = version
        self._chat_length = 0  # when it joined: where a catch-up (`since`) ends
        self._flood: ChatFlood | None = None  # made at the first chat line: most members read
        self._close_code: CloseCode | None = None
        self._outbox = SocketOutbox(config.member_outbox_frames, sink, hold=since is not None)
        self._member = Member(identity, self._outbox, version=version)
        self._session = trio.CancelScope()  # the reader's; cancelled to end the session
        self._spawn: Callable[[Callable[[], Awaitable[None]]], None] | None = None
        self._writer: trio.CancelScope | None = None  # the running writer's, if one runs
        self._done = False

    async def run(self) -> None:
        outbox = self._outbox
        member = self._member
        try:
            # Inside the try: the client may vanish while the join is being answered, and
            # the room must then still be told the member left.
            if self._since is None:  # no catch-up: nothing to wait for
                await self._room.enter(member)
            else:
                joined = await self._room.ask(lambda reply: Join(member, reply))
                assert isinstance(joined, Joined)
                self._chat_length = joined.chat_length
            if self._sink is not None:
                self._spawn = self._sink.spawn
                with self._session:
                    self._start()
                    await self._read()  # in this task: one task fewer a socket
            else:
                async with trio.open_nursery() as nursery:
                    self._session = nursery.cancel_scope
                    self._spawn = nursery.start_soon
                    self._start()
                    await self._read()
                    nursery.cancel_scope.cancel()
        except DomainError as refusal:  # closed, failed, stopped or moved before the join
            if outbox.state is OutboxState.FINISHING:  # the room ended with its Join queued
                self._close_code = outbox.close_code
            elif isinstance(refusal, RoomMoved):  # served elsewhere now: reconnect
                self._close_code = CloseCode.SERVICE_RESTART
            elif ErrorCode.INTERNAL_ERROR in refusal.codes:
                self._close_code = CloseCode.INTERNAL_ERROR
            else:
                self._close_code = CloseCode.NORMAL
        finally:
            self._done = True
            if self._writer is not None:
                self._writer.cancel()
            outbox.close()
            self._room.leave(member)
        if self._close_code is not None:
            close: dict[str, Any] = {"type": "websocket.close", "code": self._close_code}
            if self._close_code in CLOSE_REASONS:
                close["reason"] = CLOSE_REASONS[self._close_code]
            with trio.move_on_after(self._config.shutdown_grace_seconds):
                await self._send_message(close)

    def _start(self) -> None:
        """The session is running: writers may start; one starts now if there is work."""
        outbox = self._outbox
        outbox.wake = self._wake
        if self._since is not None or outbox.pending or outbox.state is not OutboxState.OPEN:
            self._wake()

    def _wake(self) -> None:
        if self._writer is None and not self._done and self._spawn is not None:
            self._writer = trio.CancelScope()
            try:
                self._spawn(self._write)
            except RuntimeError:  # the connection is ending: its reader ends the session
                self._writer = None

    async def _write(self) -> None:
        """A writer: the catch-up of a member that joined with `since`, then what is queued,
        until nothing is; it ends the session when the outbox is finished, aborted or closed."""
        assert self._writer is not None
        try:
            with self._writer:
                if self._since is not None:
                    since, self._since = self._since, None
                    await self._catch_up(since)
                    self._outbox.release()
                await self._write_queued()
        except Exception:
            log.exception("websocket session failed", extra={"path": PATH})
            self._end(CloseCode.INTERNAL_ERROR)
        finally:
            self._writer = None

    async def _catch_up(self, since: int) -> None:
        chat_length = self._chat_length
        if since < chat_length:
            missed = await self._store.chat(self._room.event_id, since)
            lines = [self._outbox.form(chat_lines.for_version(line, seq, self._version))
                     for seq, line in enumerate(missed[: chat_length - since], start=since + 1)]
            for start in range(0, len(lines), MAX_WRITE_BATCH):
                await self._send(lines[start:start + MAX_WRITE_BATCH])

    async def _write_queued(self) -> None:
        outbox = self._outbox
        while True:
            if outbox.state is OutboxState.CLOSED:  # the connection broke under a write
                self._session.cancel()
                return
            if outbox.state is OutboxState.ABORTED:
                self._end(outbox.close_code)
                return
            batch = outbox.take()
            if not batch:
                if outbox.state is OutboxState.FINISHING:  # the room finished the member
                    self._end(outbox.close_code)
                return  # nothing more to write: direct writes go on
            await self._send(batch)
            outbox.written(len(batch))

    async def _send(self, batch: list[Item]) -> None:
        if self._sink is not None:
            # The ignore: an Item is bytes or str, and with a sink it is bytes (outbox.form).
            await self._sink.send_frames(b"".join(batch))  # type: ignore[arg-type]
        else:
            for text in batch:
                await self._send_message({"type": "websocket.send", "text": text})

    async def _read(self) -> None:
        while True:
            message = await self._receive_message()
            if message["type"] == "websocket.disconnect":
                self._session.cancel()
                return
            data = message.get("text")
            if data is None:  # a binary frame
                self._end(CloseCode.UNSUPPORTED_DATA)
                return
            prefix, slash, text = data.partition("/")
            if slash and prefix == chat_lines.SEND_PREFIX and self._version == 2:
                command = self._sent_line(text)
            elif not slash or prefix != CHAT_PREFIX:
                log.debug("unknown client frame ignored", extra={"prefix": prefix[:40]})
                continue
            elif len(text) > self._config.max_chat_chars:
                command = None
                self._chat_flood().drop()
            else:
                command = Chat(self._identity, text) if self._chat_flood().admit() else None
            if command is not None and not await self._room.send(command):
                log.warning("member disconnected: the event's inbox stayed full", extra={
                    "event_id": self._room.event_id, "user_id": self._identity.user_id,
                    "waited_seconds": self._config.actor_reply_timeout_seconds})
                metrics.OVERLOADED_DISCONNECTS.inc()
                self._end(CloseCode.TRY_AGAIN_LATER)
                return
            if self._chat_flood().abusive:
                log.info("chat flood: member disconnected",
                         extra={"event_id": self._room.event_id,
                                "user_id": self._identity.user_id})
                metrics.FLOODING_DISCONNECTS.inc()
                self._end(CloseCode.FLOODING)
                return

    def _chat_flood(self) -> ChatFlood:
        if self._flood is None:  # a full bucket, as if made at the join
            self._flood = ChatFlood(self._config.chat_rate_per_second, self._config.chat_burst)
        return self._flood

    def _sent_line(self, payload: str) -> Chat | None:
        """The command for a v2 `chat/` frame; None once it has been refused with a `nack`
        (a refused line counts against the flood limit like a dropped one)."""
        sent = chat_lines.read_sent(payload, self._config.max_chat_chars)
        refusal = sent.refusal
        if refusal is None and not self._chat_flood().admit():
            refusal = chat_lines.Refusal.RATE_LIMITED
        elif refusal is not None:
            self._chat_flood().drop()
        if refusal is None:
            return Chat(self._identity, sent.text, sent.client_id, self._member)
        try:
            self._outbox.deliver(chat_lines.nack(sent.client_id, refusal))
        except OutboxFull:
            self._outbox.abort(CloseCode.SLOW_CONSUMER)
        except OutboxClosed:
            pass  # the session is ending
        return None

    def _end(self, code: CloseCode) -> None:
        self._close_code = code
        self._session.cancel()
