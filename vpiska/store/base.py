"""The one interface every store implements, so the server cannot tell sqlite from MongoDB.

Uniqueness (user name, user phone, one open event per owner) is enforced by the store's own
constraints, never by check-then-insert in Python, so it holds under concurrent requests; a
violated constraint is raised as the DomainError the API documents for it.

Error handling: methods raise DomainError for a violated constraint and let driver errors
escape; the HTTP layer answers the latter with InternalError and logs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from vpiska.domain import ChatMessage, Coordinates, Event, EventMedia, Media, User
from vpiska.errors import DomainError, ErrorCode


class Store(Protocol):
    # Users.
    async def add_user(self, user: User) -> None:
        """Insert; NameAlreadyUse / PhoneAlreadyUse / NameAndPhoneAlreadyUse on a clash."""

    async def user_by_id(self, user_id: str) -> User | None: ...

    async def user_by_phone(self, phone: str) -> User | None: ...

    async def update_user(
        self, user_id: str, *, name: str | None, phone: str | None
    ) -> User | None:
        """Change the given fields; None if the user is gone; the same codes as add_user."""

    async def set_password_hash(self, user_id: str, password_hash: str) -> None: ...

    async def set_user_image(self, user_id: str, image_id: str) -> None: ...

    # Media metadata (the bytes live in MediaFiles).
    async def add_media(self, media: Media) -> None: ...

    async def media(self, media_id: str) -> Media | None: ...

    async def delete_media(self, media_id: str) -> bool:
        """Delete the record: True if there was one, False if not. MediaInUse, deleting nothing,
        while an event (open or closed) lists the media or a user's image is the media."""

    # Events.
    async def add_event(self, event: Event) -> None:
        """Insert an open event; OwnerAlreadyHasEvent if the owner has one open already."""

    async def event(self, event_id: str) -> Event | None:
        """The event in any state, with its media list in the order it was attached."""

    async def open_event_of(self, owner_id: str) -> str | None: ...

    async def open_events(self) -> list[Event]:
        """Every open event, oldest first."""

    async def update_event(self, event_id: str, address: str, coordinates: Coordinates) -> None: ...

    async def close_event(self, event_id: str) -> None: ...

    async def add_event_media(self, event_id: str, media: EventMedia) -> None: ...

    async def remove_event_media(self, event_id: str, media_id: str) -> bool:
        """True if the media was attached and is now detached."""

    # Chat: lines are numbered 0, 1, 2, … per event; a batch is written in one transaction.
    async def append_chat(
        self, event_id: str, first_seq: int, messages: Sequence[ChatMessage]
    ) -> None: ...

    async def chat(self, event_id: str, start: int = 0) -> list[ChatMessage]:
        """Lines `start`, `start + 1`, … in order."""

    async def chat_length(self, event_id: str) -> int: ...

    async def ping(self) -> None:
        """Return when the store answers a trivial query."""

    async def aclose(self) -> None: ...


def clash_error(name_taken: bool, phone_taken: bool) -> DomainError:
    """The code for a user write that hit the unique name and/or phone constraint."""
    if name_taken and phone_taken:
        return DomainError(ErrorCode.NAME_AND_PHONE_ALREADY_USE)
    if name_taken:
        return DomainError(ErrorCode.NAME_ALREADY_USE)
    return DomainError(ErrorCode.PHONE_ALREADY_USE)
