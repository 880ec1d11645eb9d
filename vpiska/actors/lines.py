"""Lines with an identity (API.md, "Opt-in room features"): what a v2 socket is shown of the
chat, and what it is answered when it sends a line with an id (`chat/`).

A line is shown to v2 sockets with its place (`seq`, 1-based, the numbering `since=` counts)
and the moment it was stored; v1 sockets see the older backend's frame, byte for byte. A room
with v2 members therefore broadcasts each line as two frames side by side, one per audience; a
room without any broadcasts the one frame everybody has always seen, so a v1 crowd pays nothing
for v2 (Room.v2_members).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections import deque
from collections.abc import Mapping

from vpiska import wire
from vpiska.actors.frames import Audience, Frame, chat_message
from vpiska.domain import ChatMessage, is_text

ACK_PREFIX = "ack"
NACK_PREFIX = "nack"
# The client frame of an acknowledged line; on a v1 socket an unknown prefix, ignored.
SEND_PREFIX = "chat"
MAX_CLIENT_ID_CHARS = 64
# How far back a resend is recognised: the ids of the chat's last this many lines. Ten times
# what a failover takes at the busiest rate a room was measured at (BENCHMARKS.md: ~500
# lines/s in one room, a hand-over after a SIGKILL in ~6 s), and at most ~3 MiB per room
# (`SentIds`).
REMEMBERED_LINES = 10_000


class Refusal(enum.StrEnum):
    """Why a `chat/` line was not stored: a `nack`'s `reason`."""

    RATE_LIMITED = "rateLimited"  # over the socket's chat rate (the flood limiter's bucket)
    TOO_LONG = "tooLong"  # over MAX_CHAT_CHARS
    EMPTY = "empty"  # no text, or only white space
    MALFORMED = "malformed"  # not a JSON object with an id of 1-64 chars and a text string


def chat_message_v2(line: ChatMessage, seq: int) -> Frame:
    """Line number `seq` (1-based) as v2 sockets see it."""
    return Frame("chatMessage/" + wire.encode(wire.chat_json_v2(line, seq)), Audience.V2)


def shown(line: ChatMessage, seq: int, *, v2: bool) -> list[Frame]:
    """The frames line `seq` (1-based) is broadcast as: one for everyone in a room without v2
    members (`v2` False), else one per audience."""
    if not v2:
        return [chat_message(line)]
    v1 = chat_message(line)
    v1.audience = Audience.V1
    return [v1, chat_message_v2(line, seq)]


def for_version(line: ChatMessage, seq: int, version: int) -> Frame:
    """Line `seq` as a socket of `version` is shown it in a catch-up (`since=`)."""
    return chat_message_v2(line, seq) if version == 2 else chat_message(line)


def ack(client_id: str, seq: int) -> Frame:
    return Frame(ACK_PREFIX + "/" + wire.encode({"id": client_id, "seq": seq}), Audience.V2)


def nack(client_id: str | None, reason: Refusal) -> Frame:
    return Frame(NACK_PREFIX + "/" + wire.encode({"id": client_id, "reason": str(reason)}),
                 Audience.V2)


def chat_removed(seq: int) -> Frame:
    return Frame(f"chatRemoved/{seq}", Audience.V2)


@dataclasses.dataclass(frozen=True)
class Sent:
    """A `chat/` frame as read: its id (None when it has none that can be told), its text, and
    why it cannot be stored, if it cannot."""

    client_id: str | None
    text: str
    refusal: Refusal | None = None


def read_sent(payload: str, max_chars: int) -> Sent:
    """The line in a `chat/` frame's `payload`, checked for everything but the rate."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):  # not JSON; a number too long for int(); too deep
        return Sent(None, "", Refusal.MALFORMED)
    client_id = data.get("id") if isinstance(data, dict) else None
    if (not isinstance(client_id, str) or not 1 <= len(client_id) <= MAX_CLIENT_ID_CHARS
            or not is_text(client_id)):
        return Sent(None, "", Refusal.MALFORMED)
    text = data.get("text")
    if not isinstance(text, str) or not is_text(text):
        return Sent(client_id, "", Refusal.MALFORMED)
    if len(text) > max_chars:
        return Sent(client_id, "", Refusal.TOO_LONG)
    if not text.strip():
        return Sent(client_id, "", Refusal.EMPTY)
    return Sent(client_id, text)


def erased(payload: str) -> str:
    """A line's JSON object text (as events/get shows it) with its message erased."""
    line = json.loads(payload)
    line["message"] = ""
    return wire.encode(line)


SentKey = tuple[str, str]  # (user id, client id)


class SentIds:
    """The lines sent with an id (`chat/`) among the chat's last `window` lines: a resend of
    one of them is answered with its line's number instead of being stored again.

    Bounded, so that a client sending ever new ids cannot grow its room: at most `window`
    ids are held, whatever was sent. The window counts lines of the chat, not time: a new
    incarnation of the room (after a crash, a failover, a hand-over) reads the ids of the
    same last lines from the store (`Store.chat_client_ids(event, start)`, `start` from
    `first_remembered`) and recognises exactly what the last one did.
    """

    def __init__(self, known: Mapping[SentKey, int], window: int = REMEMBERED_LINES) -> None:
        """`known`: (user id, client id) → line number (0-based), as the store has them."""
        self._window = window
        self._lines: dict[SentKey, int] = {}
        self._order: deque[tuple[int, SentKey]] = deque()  # (line, key), oldest first
        for key, index in sorted(known.items(), key=lambda item: item[1]):
            self.add(key, index)

    def __len__(self) -> int:
        return len(self._lines)

    @staticmethod
    def first_remembered(chat_length: int, window: int = REMEMBERED_LINES) -> int:
        """The number of the oldest line whose id is remembered in a chat of `chat_length`."""
        return max(0, chat_length - window)

    def line(self, key: SentKey, chat_length: int) -> int | None:
        """The number of the line `key` was sent as, if within the last `window` lines of a
        chat of `chat_length` lines."""
        index = self._lines.get(key)
        if index is None or index < self.first_remembered(chat_length, self._window):
            return None
        return index

    def add(self, key: SentKey, index: int) -> None:
        """`key` was sent as line `index`, the chat's newest; older lines' ids that fall out
        of the window are forgotten."""
        self._lines[key] = index
        self._order.append((index, key))
        oldest = self.first_remembered(index + 1, self._window)
        while self._order[0][0] < oldest:
            forgotten, old_key = self._order.popleft()
            if self._lines.get(old_key) == forgotten:  # not sent again since
                del self._lines[old_key]
