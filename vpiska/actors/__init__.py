"""Live events: one supervised actor task per open event (see ARCHITECTURE.md)."""

from vpiska.actors.event import EventView
from vpiska.actors.member import CloseCode, Member
from vpiska.actors.room import Room
from vpiska.actors.supervisor import EventSupervisor

__all__ = ["CloseCode", "EventSupervisor", "EventView", "Member", "Room"]
