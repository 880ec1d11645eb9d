"""What nodes say to each other over Redis: one typed message per kind and per operation, and
the one codec for all of them (`encode`, `decode`, `decode_all`).

On an event's channel, its owner publishes (each message numbered by the owner's epoch and a
sequence number that counts every message of that epoch, so a listener can tell a gap):

- `Frames`: frames to deliver, in order, each with its chat line number (or None), its
  audience (every socket, or the sockets of one protocol version) and, for a frame meant for
  one socket alone (an answer to what it sent), that socket's key;
- `Hello`: a new owner is active (after a failover or a handover), with the chat's length;
- `Handover`: the owner is leaving; a new one follows, keep the sockets open;
- `CloseAll`: close every socket of the event with this code (event closed, room failed);
- `CloseSockets`: close these sockets (by key) with this code (a member the host removed).

On a node's channel: a `Request` carries one `RequestOp` and is answered by an `Answer` on the
asker's channel; a `Notice` carries one `NoticeOp` and has no answer. Several go to one node in
one batch (`encode_batch`, read by `decode_all`). On the cluster channel: `Notice`s to every
node. A new operation is one new op type here (added to its union) plus its handling: the
dispatches in gateway.py, owner.py and node.py `match` on these types, and mypy checks that
each handles every op.

The wire is the JSON-array layout nodes wrote before these types existed, byte for byte, so
nodes of both versions talk during a rolling deploy (tests/test_cluster_wire.py holds every
kind and op to its old bytes): a message is `[tag, field, …]` (msgspec's tagged `array_like`
Structs), and an op's arguments are a JSON object inside its envelope,
`["q", id, reply_to, op, event_id, {args}]` and `["n", op, event_id, {args}]`.

Decoding validates every field's type. Messages come from our own nodes, but a malformed one
is dropped with one warning (what was wrong, where), never allowed to raise on the bus's task;
a request whose envelope reads but whose operation does not (an op a newer node knows, or
arguments of the wrong shape) becomes a `BadRequest`, answered "failed" at once rather than
left to the asker's deadline.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, ClassVar, get_args

import msgspec

log = logging.getLogger(__name__)

# vpiska/actors/frames.py's Audience, as a number.
AudienceValue = Annotated[int, msgspec.Meta(ge=0, le=3)]
# A socket's protocol version (vpiska/actors/member.py).
Version = Annotated[int, msgspec.Meta(ge=1, le=2)]


# On an event's channel.


class Shown(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One frame of a `Frames` message, `[chat, text(, audience(, to))]`: a frame for everyone
    is `[chat, text]`, the layout nodes before v2 sockets wrote and read (`_shown_wire`)."""

    chat: int | None  # the chat line it shows, if it is one
    text: str
    audience: AudienceValue = 0
    to: str | None = None  # the key of the one socket it is for; None: all of `audience`


class Frames(msgspec.Struct, frozen=True, array_like=True, tag="f"):
    origin: str  # the owner's node id
    epoch: int
    seq: int  # of the first frame; the others follow one by one
    frames: list[Shown]

    @property
    def last_seq(self) -> int:
        return self.seq + len(self.frames) - 1


class Hello(msgspec.Struct, frozen=True, array_like=True, tag="h"):
    origin: str
    epoch: int
    seq: int
    chat_length: int


class Handover(msgspec.Struct, frozen=True, array_like=True, tag="v"):
    origin: str
    epoch: int
    seq: int


class CloseAll(msgspec.Struct, frozen=True, array_like=True, tag="x"):
    origin: str
    epoch: int
    seq: int
    code: int


class CloseSockets(msgspec.Struct, frozen=True, array_like=True, tag="k"):
    origin: str
    epoch: int
    seq: int
    code: int
    keys: list[str]


EventMessage = Frames | Hello | Handover | CloseAll | CloseSockets


# Requests to an event's owner: each op's fields are its arguments, a JSON object in the
# request (in this order: the order nodes before these types wrote them). `op` names it on the
# wire. What the owner answers is said in each docstring; `by` is the user asking.


class Join(msgspec.Struct, frozen=True, omit_defaults=True):
    """A socket on the asking node joins. Answer: `{"chat_length", "seq", "epoch", "state"}`
    (the state the socket is sent at once, or None), or `{"closed": code}` if turned away."""

    op: ClassVar[str] = "join"
    user: str
    name: str
    image: str
    key: str  # the socket, on its gateway
    v: Version = 1  # left out for v1: the request nodes before v2 sent


class Snapshot(msgspec.Struct, frozen=True):
    """Answer: the event's view (views.py `view_value`)."""

    op: ClassVar[str] = "snapshot"


class Position(msgspec.Struct, frozen=True):
    """Answer: `{"epoch", "seq"}`, where the owner's stream is (a gateway checks its own)."""

    op: ClassVar[str] = "position"


class Members(msgspec.Struct, frozen=True):
    """Answer: the present users, `[[user_id, name, image_id], …]`."""

    op: ClassVar[str] = "members"


class Update(msgspec.Struct, frozen=True):
    op: ClassVar[str] = "update"
    by: str
    address: str
    x: float
    y: float


class AddMedia(msgspec.Struct, frozen=True):
    op: ClassVar[str] = "add_media"
    by: str
    id: str
    content_type: str


class RemoveMedia(msgspec.Struct, frozen=True):
    op: ClassVar[str] = "remove_media"
    by: str
    media_id: str


class Close(msgspec.Struct, frozen=True):
    op: ClassVar[str] = "close"
    by: str


class RemoveChat(msgspec.Struct, frozen=True):
    op: ClassVar[str] = "remove_chat"
    by: str
    seq: int


class RereadChat(msgspec.Struct, frozen=True):
    op: ClassVar[str] = "reread_chat"


class RemoveMember(msgspec.Struct, frozen=True):
    op: ClassVar[str] = "remove_member"
    by: str
    user: str
    ban: bool


RequestOp = (Join | Snapshot | Position | Members | Update | AddMedia | RemoveMedia | Close
             | RemoveChat | RereadChat | RemoveMember)


# Notices to an event's owner.


class Chat(msgspec.Struct, frozen=True, omit_defaults=True):
    """A chat line from a socket on the sending node (or sent on by a node the event left)."""

    op: ClassVar[str] = "chat"
    user: str
    name: str
    image: str
    text: str
    id: str | None = None  # the socket's id of the line: it is acknowledged, and deduplicated
    key: str | None = None  # the socket to acknowledge it to, when its gateway knows it
    forwarded: int = 0  # how many times a node sent it on (node.py `_forward`)


class Leave(msgspec.Struct, frozen=True):
    op: ClassVar[str] = "leave"
    key: str


class SyncedSocket(msgspec.Struct, frozen=True, array_like=True):
    """One socket of a `Sync`, `[key, user, name, image(, v)]` (`_synced_wire`)."""

    key: str
    user: str
    name: str
    image: str
    v: Version = 1  # left out for v1: the entry nodes before v2 sent


class Sync(msgspec.Struct, frozen=True):
    """Which sockets of the event the gateway has: the owner's view of them becomes that."""

    op: ClassVar[str] = "sync"
    gateway: str
    members: list[SyncedSocket]


class Activate(msgspec.Struct, frozen=True):
    """A new event the receiving node is designated for: start it now."""

    op: ClassVar[str] = "activate"


# Notices to every node, on the cluster channel.


class Created(msgspec.Struct, frozen=True):
    op: ClassVar[str] = "created"
    name: str
    x: float
    y: float


class Moved(msgspec.Struct, frozen=True):
    op: ClassVar[str] = "moved"
    x: float
    y: float


class Closed(msgspec.Struct, frozen=True):
    op: ClassVar[str] = "closed"


class AccountDeleted(msgspec.Struct, frozen=True):
    """Sent with the event id "": it concerns every event."""

    op: ClassVar[str] = "account_deleted"
    user: str


class Banned(msgspec.Struct, frozen=True):
    op: ClassVar[str] = "banned"
    user: str


class Counted(msgspec.Struct, frozen=True):
    op: ClassVar[str] = "counted"
    count: int


class Left(msgspec.Struct, frozen=True):
    """Sent with the event id "": a node left the cluster."""

    op: ClassVar[str] = "left"
    node: str


OwnerNoticeOp = Chat | Leave | Sync | Activate
ClusterNoticeOp = Created | Moved | Closed | AccountDeleted | Banned | Counted | Left
NoticeOp = OwnerNoticeOp | ClusterNoticeOp


# On a node's channel.


class Request(msgspec.Struct, frozen=True):
    """Written `["q", id, reply_to, op.op, event_id, {op's fields}]` (`encode`)."""

    id: int
    reply_to: str  # the asking node
    op: RequestOp
    event_id: str


class BadRequest(msgspec.Struct, frozen=True):
    """A request whose operation could not be read: answered "failed", never carried out."""

    id: int
    reply_to: str
    op: str
    event_id: str
    cause: str


class Answer(msgspec.Struct, frozen=True, array_like=True, tag="a"):
    id: int
    status: str  # "ok", "refused" (value: error codes), "not_owner", "failed"
    value: Any  # what the request's op says it answers


class Notice(msgspec.Struct, frozen=True):
    """Written `["n", op.op, event_id, {op's fields}]` (`encode`)."""

    op: NoticeOp
    event_id: str  # "" for a notice about no one event


NodeMessage = Request | BadRequest | Answer | Notice
Message = EventMessage | NodeMessage


# The codec.


class _RequestWire(msgspec.Struct, frozen=True, array_like=True, tag="q"):
    id: int
    reply_to: str
    op: str
    event_id: str
    args: msgspec.Raw


class _NoticeWire(msgspec.Struct, frozen=True, array_like=True, tag="n"):
    op: str
    event_id: str
    args: msgspec.Raw


_Wire = EventMessage | _RequestWire | Answer | _NoticeWire

_encode = msgspec.json.Encoder().encode
_decoder: msgspec.json.Decoder[_Wire] = msgspec.json.Decoder(_Wire)
_batch_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_request_ops: dict[str, msgspec.json.Decoder[Any]] = {
    op.op: msgspec.json.Decoder(op) for op in get_args(RequestOp)}
_notice_ops: dict[str, msgspec.json.Decoder[Any]] = {
    op.op: msgspec.json.Decoder(op) for op in get_args(NoticeOp)}
_BATCH = b'["b",'
# What decoding raises for bytes that are not a message (msgspec recurses into nested arrays).
_UNREADABLE = (msgspec.DecodeError, RecursionError)


def encode(message: EventMessage | Request | Answer | Notice) -> bytes:
    if isinstance(message, Frames):
        return _encode(("f", message.origin, message.epoch, message.seq,
                        [_shown_wire(shown) for shown in message.frames]))
    if isinstance(message, Request):
        return _encode(("q", message.id, message.reply_to, message.op.op, message.event_id,
                        message.op))
    if isinstance(message, Notice):
        op = message.op
        args = (op if not isinstance(op, Sync) else
                {"gateway": op.gateway, "members": [_synced_wire(s) for s in op.members]})
        return _encode(("n", op.op, message.event_id, args))
    return _encode(message)


# msgspec writes every field of an array_like Struct, defaults too (omit_defaults applies to
# objects only), and nodes before v2 read these two shapes only without their trailing defaults.

def _shown_wire(shown: Shown) -> tuple[Any, ...]:
    if shown.to is not None:
        return (shown.chat, shown.text, shown.audience, shown.to)
    if shown.audience:
        return (shown.chat, shown.text, shown.audience)
    return (shown.chat, shown.text)


def _synced_wire(socket: SyncedSocket) -> tuple[Any, ...]:
    if socket.v == 1:
        return (socket.key, socket.user, socket.name, socket.image)
    return (socket.key, socket.user, socket.name, socket.image, socket.v)


def encode_batch(messages: list[bytes]) -> bytes:
    """Encoded messages as one: `["b", message, …]`; a single message goes as it is."""
    if len(messages) == 1:
        return messages[0]
    return _BATCH + b",".join(messages) + b"]"


def decode(data: bytes) -> Message | None:
    """The message in `data`, or None (logged) if it is not one."""
    try:
        return _message(data)
    except _UNREADABLE as error:
        _dropped(data, error)
        return None


def decode_all(data: bytes) -> list[Message]:
    """The messages in `data`, a batch or a single one; malformed ones are dropped (logged)."""
    if not data.startswith(_BATCH):  # every node writes a batch so (`encode_batch`)
        message = decode(data)
        return [] if message is None else [message]
    try:
        items = _batch_decoder.decode(data)[1:]
    except _UNREADABLE as error:
        _dropped(data, error)
        return []
    messages = []
    for item in items:
        try:
            messages.append(_message(item))
        except _UNREADABLE as error:
            _dropped(item, error)
    return messages


def _message(data: bytes | msgspec.Raw) -> Message:
    """Error handling: one of _UNREADABLE if `data` is not a message."""
    message = _decoder.decode(data)
    if isinstance(message, _RequestWire):
        op = _request_ops.get(message.op)
        try:
            if op is None:
                raise msgspec.ValidationError(f"unknown request {message.op!r}")
            return Request(message.id, message.reply_to, op.decode(message.args),
                           message.event_id)
        except _UNREADABLE as error:
            return BadRequest(message.id, message.reply_to, message.op, message.event_id,
                              str(error))
    if isinstance(message, _NoticeWire):
        notice = _notice_ops.get(message.op)
        if notice is None:
            raise msgspec.ValidationError(f"unknown notice {message.op!r}")
        return Notice(notice.decode(message.args), message.event_id)
    return message


def _dropped(data: bytes | msgspec.Raw, error: BaseException) -> None:
    log.warning("malformed cluster message dropped",
                extra={"size": len(data), "cause": str(error) or repr(error)})
