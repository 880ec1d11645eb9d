"""What nodes say to each other over Redis: small JSON arrays, one message kind per shape.

On an event's channel, its owner publishes (each message numbered by the owner's epoch and a
sequence number that counts every message of that epoch, so a listener can tell a gap):

- `Frames`: frames to deliver, in order, each with its chat line number (or None), its
  audience (every socket, or the sockets of one protocol version) and, for a frame meant for
  one socket alone (an answer to what it sent), that socket's key. A frame for everyone is
  `[chat, text]`, the layout nodes before v2 sockets wrote and read;
- `Hello`: a new owner is active (after a failover or a handover), with the chat's length;
- `Handover`: the owner is leaving; a new one follows, keep the sockets open;
- `CloseAll`: close every socket of the event with this code (event closed, room failed);
- `CloseSockets`: close these sockets (by key) with this code (a member the host removed).

On a node's channel: `Request` (answered by a `Reply` on the asker's channel) and `Notice`
(no answer), several to one node in one batch (`encode_batch`, read by `decode_all`). On the
cluster channel: `Notice`s to every node.

Messages come from our own nodes, but a malformed one is dropped with a warning by `decode`,
never allowed to raise on the bus's task.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

log = logging.getLogger(__name__)

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


@dataclasses.dataclass(frozen=True)
class Shown:
    """One frame of a `Frames` message."""

    chat: int | None  # the chat line it shows, if it is one
    text: str
    audience: int = 0  # vpiska/actors/frames.py's Audience
    to: str | None = None  # the key of the one socket it is for; None: all of `audience`

    def as_list(self) -> list[Any]:
        if self.to is not None:
            return [self.chat, self.text, self.audience, self.to]
        if self.audience:
            return [self.chat, self.text, self.audience]
        return [self.chat, self.text]


@dataclasses.dataclass(frozen=True)
class Frames:
    origin: str  # the owner's node id
    epoch: int
    seq: int  # of the first frame; the others follow one by one
    frames: list[Shown]

    @property
    def last_seq(self) -> int:
        return self.seq + len(self.frames) - 1


@dataclasses.dataclass(frozen=True)
class Hello:
    origin: str
    epoch: int
    seq: int
    chat_length: int


@dataclasses.dataclass(frozen=True)
class Handover:
    origin: str
    epoch: int
    seq: int


@dataclasses.dataclass(frozen=True)
class CloseAll:
    origin: str
    epoch: int
    seq: int
    code: int


@dataclasses.dataclass(frozen=True)
class CloseSockets:
    origin: str
    epoch: int
    seq: int
    code: int
    keys: list[str]


EventMessage = Frames | Hello | Handover | CloseAll | CloseSockets


@dataclasses.dataclass(frozen=True)
class Request:
    id: int
    reply_to: str  # the asking node
    op: str
    event_id: str
    args: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Reply:
    id: int
    status: str  # "ok", "refused" (value: error codes), "not_owner", "failed"
    value: Any


@dataclasses.dataclass(frozen=True)
class Notice:
    op: str
    event_id: str
    args: dict[str, Any]


NodeMessage = Request | Reply | Notice


def encode(message: EventMessage | NodeMessage) -> bytes:
    if isinstance(message, Frames):
        body: list[Any] = ["f", message.origin, message.epoch, message.seq,
                           [frame.as_list() for frame in message.frames]]
    elif isinstance(message, Hello):
        body = ["h", message.origin, message.epoch, message.seq, message.chat_length]
    elif isinstance(message, Handover):
        body = ["v", message.origin, message.epoch, message.seq]
    elif isinstance(message, CloseAll):
        body = ["x", message.origin, message.epoch, message.seq, message.code]
    elif isinstance(message, CloseSockets):
        body = ["k", message.origin, message.epoch, message.seq, message.code, message.keys]
    elif isinstance(message, Request):
        body = ["q", message.id, message.reply_to, message.op, message.event_id, message.args]
    elif isinstance(message, Reply):
        body = ["a", message.id, message.status, message.value]
    else:
        body = ["n", message.op, message.event_id, message.args]
    return _encode(body).encode()


def encode_batch(messages: list[bytes]) -> bytes:
    """Encoded messages as one: `["b", message, …]`; a single message goes as it is."""
    if len(messages) == 1:
        return messages[0]
    return b'["b",' + b",".join(messages) + b"]"


def decode(data: bytes) -> EventMessage | NodeMessage | None:
    """The message in `data`, or None (logged) if it is not one."""
    try:
        return _message(json.loads(data))
    except (ValueError, RecursionError):
        pass
    log.warning("malformed cluster message dropped", extra={"size": len(data)})
    return None


def decode_all(data: bytes) -> list[EventMessage | NodeMessage]:
    """The messages in `data`, a batch or a single one; malformed ones are dropped (logged)."""
    try:
        body = json.loads(data)
        bodies = body[1:] if isinstance(body, list) and body[:1] == ["b"] else [body]
    except (ValueError, RecursionError):
        bodies = [None]
    messages = []
    for item in bodies:
        try:
            messages.append(_message(item))
        except ValueError:
            log.warning("malformed cluster message dropped", extra={"size": len(data)})
    return messages


def _message(body: Any) -> EventMessage | NodeMessage:
    """The message a decoded JSON body holds. Error handling: ValueError if none."""
    try:
        kind = body[0]
        if kind == "f":
            return Frames(str(body[1]), int(body[2]), int(body[3]),
                          [_shown(entry) for entry in body[4]])
        if kind == "h":
            return Hello(str(body[1]), int(body[2]), int(body[3]), int(body[4]))
        if kind == "v":
            return Handover(str(body[1]), int(body[2]), int(body[3]))
        if kind == "x":
            return CloseAll(str(body[1]), int(body[2]), int(body[3]), int(body[4]))
        if kind == "k":
            return CloseSockets(str(body[1]), int(body[2]), int(body[3]), int(body[4]),
                                [str(key) for key in body[5]])
        if kind == "q":
            return Request(int(body[1]), str(body[2]), str(body[3]), str(body[4]),
                           dict(body[5]))
        if kind == "a":
            return Reply(int(body[1]), str(body[2]), body[3])
        if kind == "n":
            return Notice(str(body[1]), str(body[2]), dict(body[3]))
    except (ValueError, TypeError, IndexError, KeyError, RecursionError) as error:
        raise ValueError(f"not a cluster message: {error!r}") from error
    raise ValueError(f"not a cluster message: kind {kind!r}")


def _shown(entry: list[Any]) -> Shown:
    chat, text, *rest = entry
    audience = int(rest[0]) if rest else 0
    if audience not in (0, 1, 2, 3) or len(rest) > 2:
        raise ValueError("not a frame")
    return Shown(None if chat is None else int(chat), str(text), audience,
                 str(rest[1]) if len(rest) == 2 else None)
