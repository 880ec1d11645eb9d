"""The in-memory store: a fake of the layer below, with the semantics of the sqlite store.

Tests of the event actors and test servers use it where a real store would get in the way: the
sqlite and MongoDB stores run every call in a worker thread, and a task waiting for a thread
counts as blocked, so `autojump_clock` jumps virtual time while the thread works and
`wait_all_tasks_blocked()` returns before the write is done. This store has no threads.
tests/test_store_contract.py runs the whole contract on it, so what holds of the real stores
holds here: unique name and phone with the same clash codes, one open event per owner, chat
lines numbered per event, media in the order attached, open events oldest first.

Every call is one checkpoint followed by the whole operation, with no await in between: a call
cancelled at its checkpoint changes nothing, one past it is atomic, and concurrent calls
interleave only between operations, as a real store's calls do.

Resource handling: there is nothing to open; after `aclose` every call raises
trio.ClosedResourceError, as a closed connection refuses calls.

Error handling: DomainError where the real stores raise one; IntegrityError where sqlite raises
its own for a repeated key that no DomainError covers (a media id, a chat line's seq).

Fencing (vpiska/store/base.py): each event's claimed epoch and its claimant are kept beside it,
and a fenced write checks them in the same step as it writes, so check and write are trivially
atomic.
"""

from __future__ import annotations

import dataclasses
import itertools
from bisect import bisect_left, insort
from collections.abc import Sequence
from operator import attrgetter

import trio

from vpiska.domain import ChatMessage, Coordinates, Event, EventMedia, Media, User
from vpiska.errors import DomainError, ErrorCode
from vpiska.store.base import check_claim, check_epoch, clash_error

__all__ = ["IntegrityError", "MemoryStore"]


class IntegrityError(Exception):
    """A write repeated a key the store keeps unique: a media id or a chat line's seq.

    The caller's bug (ids are fresh UUIDs; an event's actor numbers its own lines), raised where
    the sqlite store raises sqlite3.IntegrityError. Nothing of the write is kept.
    """


@dataclasses.dataclass
class _Chat:
    """One event's chat: `seqs` kept sorted, so reading from a line on is a bisection."""

    seqs: list[int] = dataclasses.field(default_factory=list)
    lines: dict[int, ChatMessage] = dataclasses.field(default_factory=dict)


class MemoryStore:
    """Store in this process's memory; see the module docstring.

    Records are frozen values and every list is built anew per call, so what a caller gets
    never aliases the store's state.
    """

    def __init__(self) -> None:
        self._users: dict[str, User] = {}
        # The unique indexes: name / phone → user id, owner id → id of their open event.
        self._user_names: dict[str, str] = {}
        self._user_phones: dict[str, str] = {}
        self._open_event_of: dict[str, str] = {}
        self._media: dict[str, Media] = {}
        self._events: dict[str, Event] = {}  # insertion order breaks created_at ties
        self._epochs: dict[str, int] = {}  # event id -> claimed epoch; absent: 0, never claimed
        self._claimants: dict[str, str] = {}  # event id -> the node that claimed that epoch
        self._chats: dict[str, _Chat] = {}
        self._closed = False

    async def _enter(self) -> None:
        """The one checkpoint of a call; the caller then runs to its end without yielding."""
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")

    async def aclose(self) -> None:
        self._closed = True  # first: closed even when cancelled, as trio's aclose contract asks
        await trio.lowlevel.checkpoint()

    async def maintain(self) -> None:
        await trio.sleep_forever()  # nothing to look after

    async def ping(self) -> None:
        await self._enter()

    # Users.

    async def add_user(self, user: User) -> None:
        await self._enter()
        name_taken, phone_taken = self._taken(user.id, user.name, user.phone)
        # A repeated id breaks the primary key, which the real stores report as a clash too.
        if name_taken or phone_taken or user.id in self._users:
            raise clash_error(name_taken, phone_taken)
        self._put_user(user)

    def _taken(self, user_id: str, name: str | None, phone: str | None) -> tuple[bool, bool]:
        """Whether another user holds `name` / `phone` (None: not asked)."""
        name_taken = name is not None and self._user_names.get(name, user_id) != user_id
        phone_taken = phone is not None and self._user_phones.get(phone, user_id) != user_id
        return name_taken, phone_taken

    def _put_user(self, user: User) -> None:
        old = self._users.get(user.id)
        if old is not None:
            del self._user_names[old.name], self._user_phones[old.phone]
        self._users[user.id] = user
        self._user_names[user.name] = user.id
        self._user_phones[user.phone] = user.id

    async def user_by_id(self, user_id: str) -> User | None:
        await self._enter()
        return self._users.get(user_id)

    async def user_ids(self, limit: int) -> list[str]:
        await self._enter()
        return list(itertools.islice(self._users, limit))

    async def user_by_phone(self, phone: str) -> User | None:
        await self._enter()
        user_id = self._user_phones.get(phone)
        return None if user_id is None else self._users[user_id]

    async def update_user(
        self, user_id: str, *, name: str | None, phone: str | None
    ) -> User | None:
        await self._enter()
        user = self._users.get(user_id)
        if user is None:
            return None
        name_taken, phone_taken = self._taken(user_id, name, phone)
        if name_taken or phone_taken:
            raise clash_error(name_taken, phone_taken)
        updated = dataclasses.replace(
            user,
            name=user.name if name is None else name,
            phone=user.phone if phone is None else phone,
        )
        self._put_user(updated)
        return updated

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        await self._enter()
        if (user := self._users.get(user_id)) is not None:
            self._users[user_id] = dataclasses.replace(user, password_hash=password_hash)

    async def set_user_image(self, user_id: str, image_id: str) -> User | None:
        await self._enter()
        if (user := self._users.get(user_id)) is not None:
            self._users[user_id] = dataclasses.replace(user, image_id=image_id)
        return user

    async def delete_user(self, user_id: str) -> User | None:
        await self._enter()
        user = self._users.pop(user_id, None)
        if user is not None:
            del self._user_names[user.name], self._user_phones[user.phone]
        return user

    async def anonymise_chat(self, user_id: str) -> list[str]:
        await self._enter()
        touched = []
        for event_id, chat in self._chats.items():
            mine = [seq for seq, line in chat.lines.items() if line.user_id == user_id]
            for seq in mine:
                chat.lines[seq] = dataclasses.replace(chat.lines[seq], user_name="",
                                                      user_image_id="")
            if mine:
                touched.append(event_id)
        return touched

    # Media.

    async def add_media(self, media: Media) -> None:
        await self._enter()
        if media.id in self._media:
            raise IntegrityError(f"media {media.id} exists")
        # int(): what a real store reads back, whatever numeric type the caller passed.
        self._media[media.id] = dataclasses.replace(media, size=int(media.size))

    async def media(self, media_id: str) -> Media | None:
        await self._enter()
        return self._media.get(media_id)

    async def media_ids(self, after: str, limit: int) -> list[str]:
        await self._enter()
        return sorted(media_id for media_id in self._media if media_id > after)[:limit]

    async def media_found(self, media_ids: Sequence[str]) -> set[str]:
        await self._enter()
        return {media_id for media_id in media_ids if media_id in self._media}

    async def delete_media(self, media_id: str) -> bool:
        await self._enter()
        if media_id not in self._media:
            return False
        if self._in_use(media_id):
            raise DomainError(ErrorCode.MEDIA_IN_USE)
        del self._media[media_id]
        return True

    def _in_use(self, media_id: str) -> bool:
        return any(
            media.id == media_id for event in self._events.values() for media in event.media
        ) or any(user.image_id == media_id for user in self._users.values())

    # Events.

    async def add_event(self, event: Event) -> None:
        await self._enter()
        # A repeated id breaks the primary key, which the real stores report as this code too.
        if event.id in self._events or (event.is_open and event.owner_id in self._open_event_of):
            raise DomainError(ErrorCode.OWNER_ALREADY_HAS_EVENT)
        self._events[event.id] = dataclasses.replace(
            event, coordinates=_as_stored(event.coordinates))
        if event.is_open:
            self._open_event_of[event.owner_id] = event.id

    async def event(self, event_id: str) -> Event | None:
        await self._enter()
        return self._events.get(event_id)

    async def open_event_of(self, owner_id: str) -> str | None:
        await self._enter()
        return self._open_event_of.get(owner_id)

    async def open_events(self) -> list[Event]:
        await self._enter()
        # sorted() is stable: events created at one instant stay in insertion order.
        return sorted(
            (event for event in self._events.values() if event.is_open),
            key=attrgetter("created_at"),
        )

    async def claim_event(self, event_id: str, epoch: int, claimant: str) -> Event | None:
        await self._enter()
        event = self._events.get(event_id)
        if event is None:
            return None
        check_claim(event_id, epoch, claimant, self._epochs.get(event_id, 0),
                    self._claimants.get(event_id))
        self._epochs[event_id] = epoch
        self._claimants[event_id] = claimant
        return event

    def _fenced_event(self, event_id: str, epoch: int | None) -> Event | None:
        """The event a write by `epoch` may change (None: unknown); StaleEpoch if it may not."""
        event = self._events.get(event_id)
        if event is not None:
            check_epoch(event_id, epoch, self._epochs.get(event_id, 0))
        return event

    async def update_event(
        self, event_id: str, address: str, coordinates: Coordinates, *, epoch: int | None = None
    ) -> None:
        await self._enter()
        if (event := self._fenced_event(event_id, epoch)) is not None:
            self._events[event_id] = dataclasses.replace(
                event, address=address, coordinates=_as_stored(coordinates))

    async def close_event(self, event_id: str, *, epoch: int | None = None) -> None:
        await self._enter()
        event = self._fenced_event(event_id, epoch)
        if event is None or not event.is_open:
            return
        self._events[event_id] = dataclasses.replace(event, is_open=False)
        del self._open_event_of[event.owner_id]

    async def add_event_media(
        self, event_id: str, media: EventMedia, *, epoch: int | None = None
    ) -> None:
        await self._enter()
        event = self._fenced_event(event_id, epoch)
        if event is None or any(attached.id == media.id for attached in event.media):
            return
        self._events[event_id] = dataclasses.replace(event, media=(*event.media, media))

    async def remove_event_media(
        self, event_id: str, media_id: str, *, epoch: int | None = None
    ) -> bool:
        await self._enter()
        event = self._fenced_event(event_id, epoch)
        if event is None:
            return False
        kept = tuple(attached for attached in event.media if attached.id != media_id)
        if len(kept) == len(event.media):
            return False
        self._events[event_id] = dataclasses.replace(event, media=kept)
        return True

    async def ban_member(self, event_id: str, user_id: str, *, epoch: int | None = None) -> None:
        await self._enter()
        event = self._fenced_event(event_id, epoch)
        if event is not None and user_id not in event.banned:
            self._events[event_id] = dataclasses.replace(event, banned=event.banned | {user_id})

    # Chat.

    async def append_chat(
        self, event_id: str, first_seq: int, messages: Sequence[ChatMessage], *,
        epoch: int | None = None,
    ) -> None:
        await self._enter()
        self._fenced_event(event_id, epoch)
        chat = self._chats.setdefault(event_id, _Chat())
        seqs = range(first_seq, first_seq + len(messages))
        if any(seq in chat.lines for seq in seqs):  # all or nothing, as one transaction
            raise IntegrityError(f"event {event_id} has a chat line in {seqs}")
        for seq, message in zip(seqs, messages, strict=True):
            chat.lines[seq] = message
            insort(chat.seqs, seq)

    async def chat(self, event_id: str, start: int = 0) -> list[ChatMessage]:
        await self._enter()
        chat = self._chats.get(event_id)
        if chat is None:
            return []
        return [chat.lines[seq] for seq in chat.seqs[bisect_left(chat.seqs, start):]]

    async def chat_length(self, event_id: str) -> int:
        await self._enter()
        chat = self._chats.get(event_id)
        return chat.seqs[-1] + 1 if chat is not None and chat.seqs else 0

    async def chat_slice(self, event_id: str, start: int, stop: int) -> list[ChatMessage]:
        await self._enter()
        chat = self._chats.get(event_id)
        if chat is None:
            return []
        seqs = chat.seqs[bisect_left(chat.seqs, start):bisect_left(chat.seqs, stop)]
        return [chat.lines[seq] for seq in seqs]

    async def chat_client_ids(self, event_id: str, start: int = 0) -> dict[tuple[str, str], int]:
        await self._enter()
        chat = self._chats.get(event_id)
        lines = {} if chat is None else chat.lines
        return {(line.user_id, line.client_id): seq for seq, line in lines.items()
                if line.client_id is not None and seq >= start}

    async def erase_chat(self, event_id: str, seq: int, *, epoch: int | None = None) -> bool:
        await self._enter()
        self._fenced_event(event_id, epoch)
        chat = self._chats.get(event_id)
        if chat is None or seq not in chat.lines:
            return False
        chat.lines[seq] = dataclasses.replace(chat.lines[seq], message="")
        return True


def _as_stored(coordinates: Coordinates) -> Coordinates:
    """Coordinates as a real store reads them back: doubles, even if JSON gave integers."""
    return Coordinates(float(coordinates.x), float(coordinates.y))
