"""What an event's room is asked to do: frozen values on its inbox, one at a time.

Commands that need an answer carry a one-shot `reply` channel. The actor answers with an
`outcome` (a value or a DomainError) and always closes the channel, also when it crashes, so a
caller waiting for the answer sees EndOfChannel at once rather than waiting out its deadline.
"""

from __future__ import annotations

import dataclasses

import outcome
import trio

from vpiska.actors.member import Member
from vpiska.domain import Coordinates, EventMedia, Identity

Reply = trio.MemorySendChannel[outcome.Outcome[object]]


@dataclasses.dataclass(frozen=True)
class Join:
    """A socket joins; the answer is `Joined`, if anyone waits for it (`reply`). The member is
    sent the event's current state (`eventUpdated`) at once."""

    member: Member
    reply: Reply | None


@dataclasses.dataclass(frozen=True)
class Joined:
    """Where a socket starts: the chat's length and the room's last published message
    (`Room.seq`) when it joined; every frame after that message reaches it."""

    chat_length: int
    seq: int


@dataclasses.dataclass(frozen=True)
class Leave:
    member: Member


@dataclasses.dataclass(frozen=True)
class Chat:
    sender: Identity
    text: str
    # A v2 line sent with an id (`chat/`, vpiska/actors/lines.py): stored once per id and
    # sender, and acknowledged to `member`, the sending socket (None: nobody to tell, e.g. a
    # socket the room does not know yet after a failover; the resend is acknowledged).
    client_id: str | None = None
    member: Member | None = None


@dataclasses.dataclass(frozen=True)
class RemoveChat:
    """The host erases line `seq` (1-based) of the chat; the answer is None."""

    by: str
    seq: int
    reply: Reply


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The answer is an EventView: what `events/get` shows."""

    reply: Reply


@dataclasses.dataclass(frozen=True)
class Members:
    """The answer is the users present, each once (a list of Identity): `events/members`."""

    reply: Reply


@dataclasses.dataclass(frozen=True)
class Update:
    by: str
    address: str
    coordinates: Coordinates
    reply: Reply


@dataclasses.dataclass(frozen=True)
class AddMedia:
    by: str
    media: EventMedia
    reply: Reply


@dataclasses.dataclass(frozen=True)
class RemoveMedia:
    by: str
    media_id: str
    reply: Reply


@dataclasses.dataclass(frozen=True)
class Close:
    by: str
    reply: Reply


@dataclasses.dataclass(frozen=True)
class RemoveMember:
    """The host removes `user_id`'s sockets from the event (4003); with `ban`, for as long
    as the event is open (their handshakes get 403)."""

    by: str
    user_id: str
    ban: bool
    reply: Reply


@dataclasses.dataclass(frozen=True)
class RereadChat:
    """The store's chat lines of the event changed under the actor (a deleted account's were
    anonymised): what it keeps of them (and mirrors) is read again."""

    reply: Reply


@dataclasses.dataclass(frozen=True)
class Stop:
    """Server shutdown: finish what is queued before this, then close every socket (1001).
    With `hand_over` (a node leaving a cluster) the chat lines queued behind it when the actor
    takes it are written too (not those that come later: the node sends other nodes' lines
    on to the next owner), the sockets here close with 1012 and those on other nodes stay,
    for the event's next owner."""

    hand_over: bool = False


Command = (Join | Leave | Chat | Snapshot | Members | Update | AddMedia | RemoveMedia | Close
           | Stop | RemoveChat | RemoveMember | RereadChat)
