"""The server's WebSocket frames, as a room produces them: `prefix/payload` text.

A broadcast hands one Frame to every member. The transport turns it into bytes for its
sockets and keeps them in `encoded`, so a frame for a thousand members is encoded once, not a
thousand times; what those bytes are (WebSocket framing, vpiska/http/outbox.py) is none of the
room's business.

A frame's `audience` says which sockets see it: every socket, or only those of one protocol
version (API.md, "Opt-in room features": a socket opts in to v2 with `&v=2`). A change that v2
shows differently is broadcast as two frames, one for each audience, side by side in one
broadcast, so each socket sees the room's changes in the room's order whatever its version.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import msgspec

from vpiska import wire
from vpiska.domain import ChatMessage, Event, EventMedia


class Audience(enum.IntEnum):
    """Which sockets see a frame: the value is also what cluster messages carry."""

    EVERYONE = 0
    V1 = 1  # sockets without `v=2`: what the older backend's clients know
    V2 = 2  # sockets that opted in to v2
    # v2 sockets that have been sent the presence list: the changes to it (presence.py)
    PRESENT = 3


class Frame:
    __slots__ = ("text", "encoded", "audience")

    def __init__(self, text: str, audience: Audience = Audience.EVERYONE) -> None:
        self.text = text
        # The transport's encoding of `text`, filled on first delivery and shared by every
        # socket of the broadcast.
        self.encoded: bytes | None = None
        self.audience = audience

    def __repr__(self) -> str:
        return f"Frame({self.text[:60]!r})"

    def seen_by(self, version: int) -> bool:
        """Whether a socket of protocol `version` (1 or 2) is shown this frame."""
        return self.audience is Audience.EVERYONE or self.audience == version


def for_version(frames: Sequence[Frame], version: int) -> Sequence[Frame]:
    """The part of a broadcast's `frames` a socket of `version` sees, in their order; `frames`
    itself when that is all of them (the common case costs no copy)."""
    if all(frame.audience is Audience.EVERYONE for frame in frames):
        return frames
    return [frame for frame in frames if frame.seen_by(version)]


CLOSE_EVENT = Frame("closeEvent/")


def event_updated(event: Event, users_count: int) -> Frame:
    return Frame("eventUpdated/" + wire.encode(wire.event_updated_json(event, users_count)))


class EventUpdates:
    """The `eventUpdated/` frames of one room, whose text is encoded once per version of the
    event and put together around `usersCount`, the one field a join changes: the same text as
    `event_updated`, without a JSON encoding per join."""

    __slots__ = ("_event", "_head", "_tail")

    def __init__(self) -> None:
        self._event: Event | None = None
        self._head = self._tail = ""

    def frame(self, event: Event, users_count: int) -> Frame:
        if event is not self._event:
            # The last match is the field: a name's or an address's quotes are escaped.
            head, count, tail = event_updated(event, 0).text.rpartition(',"usersCount":0,')
            assert count, "eventUpdated/ has its usersCount before the coordinates"
            self._event, self._head, self._tail = event, head + ',"usersCount":', "," + tail
        return Frame(f"{self._head}{users_count}{self._tail}")


# A chat line's frame is built on the actor's task, once per line, so its JSON is written by
# msgspec: for an object of strings it writes wire.encode's text exactly
# (tests/test_chat_frames.py checks every code point) in a fifth of the time. A line is text
# (domain.is_text) before it gets here: a lone surrogate, which no UTF-8 holds, would raise.
_encode_strings = msgspec.json.Encoder().encode


def chat_message(message: ChatMessage) -> Frame:
    return Frame("chatMessage/" + _encode_strings(wire.chat_json(message)).decode())


def payload(frame: Frame) -> str:
    """What follows a frame's `prefix/`: for a chat line, its JSON object as events/get shows
    it too."""
    return frame.text.partition("/")[2]


def media_added(media: EventMedia) -> Frame:
    """The older backend's running code sends the media's JSON (its commit "content type in
    socket", 2022-06), not the id alone its README shows; the clients in use read the JSON."""
    return Frame("mediaAdded/" + wire.encode(wire.media_json(media)))


def media_removed(media_id: str) -> Frame:
    return Frame("mediaRemoved/" + media_id)
