"""The server's WebSocket frames, as a room produces them: `prefix/payload` text.

A broadcast hands one Frame to every member. The transport turns it into bytes for its
sockets and keeps them in `encoded`, so a frame for a thousand members is encoded once, not a
thousand times; what those bytes are (WebSocket framing, vpiska/http/outbox.py) is none of the
room's business.
"""

from __future__ import annotations

from vpiska import wire
from vpiska.domain import ChatMessage, Event, EventMedia


class Frame:
    __slots__ = ("text", "encoded")

    def __init__(self, text: str) -> None:
        self.text = text
        # The transport's encoding of `text`, filled on first delivery and shared by every
        # socket of the broadcast.
        self.encoded: bytes | None = None

    def __repr__(self) -> str:
        return f"Frame({self.text[:60]!r})"


CLOSE_EVENT = Frame("closeEvent/")


def event_updated(event: Event, users_count: int) -> Frame:
    return Frame("eventUpdated/" + wire.encode(wire.event_updated_json(event, users_count)))


def chat_message(message: ChatMessage) -> Frame:
    return Frame("chatMessage/" + wire.encode(wire.chat_json(message)))


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
