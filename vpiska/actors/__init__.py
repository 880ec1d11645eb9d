"""Live events: one supervised actor task per open event (see ARCHITECTURE.md).

Nothing here knows a socket: a member's socket is an `Outbox` (member.py) that the transport
implements.
"""

from vpiska.actors.flood import ChatFlood
from vpiska.actors.member import CloseCode, Member, Outbox, OutboxClosed, OutboxFull
from vpiska.actors.room import Room
from vpiska.actors.supervisor import EventSupervisor
from vpiska.actors.view import EventView, Mirror

__all__ = [
    "ChatFlood",
    "CloseCode",
    "EventSupervisor",
    "EventView",
    "Member",
    "Mirror",
    "Outbox",
    "OutboxClosed",
    "OutboxFull",
    "Room",
]
