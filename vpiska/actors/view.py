"""The event as `events/get` shows it, and the mirror a cluster keeps of it.

On one node every `events/get` reaches the event's actor. In a cluster, a node asked for an
event owned elsewhere reads it from a mirror the owner keeps in Redis
(vpiska/cluster/views.py) instead of waiting on the owner's event loop, which under load
answered a remote read only after ~10 turns of its own. The mirror answers exactly as the
actor would because the actor brings it up to date before anyone can learn of a change:
before answering a command that changed the event, before showing a chat line to anyone, and
after a member left.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from vpiska.domain import Event


@dataclasses.dataclass(frozen=True)
class EventView:
    """The event as `events/get` shows it. `chat` is every chat line, as the JSON object text
    each line is on the wire, when the actor holds them (up to `chat_memory_lines`); None
    when the chat is longer and its first `chat_length` lines must be read from the store."""

    event: Event
    users_count: int
    chat_length: int
    chat: tuple[str, ...] | None = None


class Mirror(Protocol):
    async def show(self, epoch: int, view: EventView, known_lines: int) -> None:
        """Make the mirror hold `view` (a closed event: nothing), of which it holds the
        first `known_lines` chat lines already (0: it holds none it can keep).

        Error handling: returns once the mirror holds it, however long that takes (the
        node fences the room if it cannot reach Redis); StaleEpoch once a newer owner has
        the event."""
