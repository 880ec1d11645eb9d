"""The MongoDB store, on the older Go backend's collections so an existing database works as-is.

Documents keep the older backend's shapes field for field (`users`, `events`, `media`; string
uuid `_id`s, `image_id` "" for no image, `state` 0 open / 1 closed, BSON dates, int64 sizes), so
the two backends can share a database during a migration. What is new:

- Chat lines go to a `chat_messages` collection, one document per line numbered by `seq`, so a
  batch is one `insert_many` instead of one `$push` per line into an ever-growing event document.
  An older event's embedded `chat_messages` array holds lines 0..L-1; the collection continues
  from L.
- Unique indexes enforce what the older backend only checked before inserting. An older database
  may already break them; then the index is not created, one error is logged, and vpiska serves
  on without that guarantee rather than refusing to start.

pymongo blocks, so every call runs in a worker thread under one CapacityLimiter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import trio
from bson.int64 import Int64
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure

from vpiska import metrics
from vpiska.domain import ChatMessage, Coordinates, Event, EventMedia, Media, User
from vpiska.errors import DomainError, ErrorCode
from vpiska.store.base import clash_error

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_CALL_DURATION = metrics.STORE_CALL_DURATION.labels(store="mongodb")
Document = dict[str, Any]

OPEN, CLOSED = 0, 1

# Threads that may talk to the server at once: below pymongo's default pool of 100
# connections, so a thread never waits for a connection while holding a limiter slot.
THREADS = 32

# A `$slice` limit meaning "to the end": the server wants a positive int32.
_TO_THE_END = 2**31 - 1

# (collection, index name, keys, options), created at start-up. The names appear in the
# start-up error when an older database's data breaks an index.
_INDEXES: tuple[tuple[str, str, list[tuple[str, int]], Mapping[str, Any]], ...] = (
    ("users", "users_name_unique", [("name", ASCENDING)], {"unique": True}),
    ("users", "users_phone_unique", [("phone", ASCENDING)], {"unique": True}),
    (
        "events", "events_one_open_per_owner", [("owner_id", ASCENDING)],
        {"unique": True, "partialFilterExpression": {"state": OPEN}},
    ),
    # Serves `open_events` (filter on state, sort on created_at).
    ("events", "events_state", [("state", ASCENDING), ("created_at", ASCENDING)], {}),
    # Serve `delete_media`'s question: does an event or a user refer to this media?
    ("events", "events_media", [("media._id", ASCENDING)], {}),
    ("users", "users_image", [("image_id", ASCENDING)], {}),
    (
        "chat_messages", "chat_messages_event_seq", [("event_id", ASCENDING), ("seq", ASCENDING)],
        {"unique": True},
    ),
)

# Events are read without the arrays vpiska does not serve from the event: the older
# backend's stale `users` list and its chat, which `chat` reads on its own.
_EVENT_FIELDS = {"users": 0, "chat_messages": 0}
_CHAT_FIELDS = {"_id": 0, "user_id": 1, "user_name": 1, "user_image_id": 1, "message": 1}


class MongoStore:
    """Store on one MongoDB database. Resource handling: `open` (or `from_client`) creates the
    indexes; `aclose` closes the client, which the store owns from then on."""

    def __init__(self, client: MongoClient[Document], db: Database[Document], threads: int) -> None:
        self._client = client
        self._users = db["users"]
        self._events = db["events"]
        self._media = db["media"]
        self._chat = db["chat_messages"]
        self._limiter = trio.CapacityLimiter(threads)

    @classmethod
    async def open(cls, uri: str, db_name: str) -> MongoStore:
        # The constructor resolves `mongodb+srv://` names over DNS, so it blocks too.
        client: MongoClient[Document] = await trio.to_thread.run_sync(partial(MongoClient, uri))
        try:
            return await cls.from_client(client, db_name)
        except BaseException:
            with trio.CancelScope(shield=True):  # closing talks to the server: not in the loop
                await trio.to_thread.run_sync(client.close)
            raise

    @classmethod
    async def from_client(
        cls, client: MongoClient[Document], db_name: str, *, threads: int = THREADS
    ) -> MongoStore:
        """A store on an existing client (tests pass a `mongomock.MongoClient`, which needs
        `threads=1`: its unique check is insert-then-count without a lock, so two concurrent
        inserts of one key can both be rejected)."""
        store = cls(client, client[db_name], threads)
        await store._run(partial(_create_indexes, client[db_name]))
        return store

    async def _run(self, fn: Callable[[], _T]) -> _T:
        with _CALL_DURATION.time():
            return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def aclose(self) -> None:
        await self._run(self._client.close)

    async def ping(self) -> None:
        await self._run(partial(self._client.admin.command, "ping"))

    # Users.

    async def add_user(self, user: User) -> None:
        document = {
            "_id": user.id, "name": user.name, "phone_code": user.phone_code,
            "phone": user.phone, "image_id": user.image_id or "", "password": user.password_hash,
        }

        def insert() -> None:
            try:
                self._users.insert_one(document)
            except DuplicateKeyError:
                raise self._user_clash(user.id, user.name, user.phone) from None

        await self._run(insert)

    def _user_clash(self, user_id: str, name: str | None, phone: str | None) -> DomainError:
        """After a failed write, name every field that another user already holds."""
        others = {"_id": {"$ne": user_id}}
        name_taken = name is not None and self._users.find_one({"name": name, **others}) is not None
        phone_taken = (
            phone is not None and self._users.find_one({"phone": phone, **others}) is not None
        )
        return clash_error(name_taken, phone_taken)

    async def user_by_id(self, user_id: str) -> User | None:
        return await self._run(partial(self._one_user, {"_id": user_id}))

    async def user_by_phone(self, phone: str) -> User | None:
        return await self._run(partial(self._one_user, {"phone": phone}))

    def _one_user(self, query: Document) -> User | None:
        document = self._users.find_one(query)
        return _user(document) if document else None

    async def update_user(
        self, user_id: str, *, name: str | None, phone: str | None
    ) -> User | None:
        changes = {
            key: value for key, value in (("name", name), ("phone", phone)) if value is not None
        }

        def update() -> User | None:
            if not changes:  # the server refuses an empty $set
                return self._one_user({"_id": user_id})
            try:
                document = self._users.find_one_and_update(
                    {"_id": user_id}, {"$set": changes}, return_document=ReturnDocument.AFTER
                )
            except DuplicateKeyError:
                raise self._user_clash(user_id, name, phone) from None
            return _user(document) if document else None

        return await self._run(update)

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        await self._run(
            partial(self._users.update_one, {"_id": user_id}, {"$set": {"password": password_hash}})
        )

    async def set_user_image(self, user_id: str, image_id: str) -> None:
        await self._run(
            partial(self._users.update_one, {"_id": user_id}, {"$set": {"image_id": image_id}})
        )

    # Media.

    async def add_media(self, media: Media) -> None:
        document = {
            "_id": media.id, "name": media.name, "content_type": media.content_type,
            "size": Int64(media.size), "last_modified_date": media.last_modified,
        }
        await self._run(partial(self._media.insert_one, document))

    async def media(self, media_id: str) -> Media | None:
        document = await self._run(partial(self._media.find_one, {"_id": media_id}))
        if document is None:
            return None
        return Media(
            id=document["_id"], name=document["name"], content_type=document["content_type"],
            size=int(document["size"]), last_modified=_utc(document["last_modified_date"]),
        )

    async def delete_media(self, media_id: str) -> bool:
        """Check, then delete: MongoDB has no transaction across collections without a replica
        set, which vpiska does not require. So unlike sqlite's, this MediaInUse check is not
        atomic with the delete: a reference written between the two survives its media. Media
        is referred to only by the request that uploaded it, before anyone else learns its id,
        so only that request could race itself."""

        def delete() -> bool:
            if self._media.find_one({"_id": media_id}, {"_id": 1}) is None:
                return False
            if (self._events.find_one({"media._id": media_id}, {"_id": 1}) is not None
                    or self._users.find_one({"image_id": media_id}, {"_id": 1}) is not None):
                raise DomainError(ErrorCode.MEDIA_IN_USE)
            return self._media.delete_one({"_id": media_id}).deleted_count > 0

        return await self._run(delete)

    # Events.

    async def add_event(self, event: Event) -> None:
        document = {
            "_id": event.id, "owner_id": event.owner_id, "name": event.name,
            "address": event.address, "state": OPEN if event.is_open else CLOSED,
            "coordinates": _coordinates(event.coordinates), "created_at": event.created_at,
            # The older backend reads these arrays and cannot decode a missing one.
            "users": [],
            "media": [_event_media(media) for media in event.media],
            "chat_messages": [],
        }

        def insert() -> None:
            try:
                self._events.insert_one(document)
            except DuplicateKeyError:
                raise DomainError(ErrorCode.OWNER_ALREADY_HAS_EVENT) from None

        await self._run(insert)

    async def event(self, event_id: str) -> Event | None:
        document = await self._run(partial(self._events.find_one, {"_id": event_id}, _EVENT_FIELDS))
        return _event(document) if document else None

    async def open_event_of(self, owner_id: str) -> str | None:
        document = await self._run(
            partial(self._events.find_one, {"owner_id": owner_id, "state": OPEN}, {"_id": 1})
        )
        return document["_id"] if document else None

    async def open_events(self) -> list[Event]:
        def select() -> list[Event]:
            cursor = self._events.find({"state": OPEN}, _EVENT_FIELDS).sort(
                [("created_at", ASCENDING), ("_id", ASCENDING)]
            )
            return [_event(document) for document in cursor]

        return await self._run(select)

    async def update_event(self, event_id: str, address: str, coordinates: Coordinates) -> None:
        changes = {"address": address, "coordinates": _coordinates(coordinates)}
        await self._run(partial(self._events.update_one, {"_id": event_id}, {"$set": changes}))

    async def close_event(self, event_id: str) -> None:
        await self._run(
            partial(self._events.update_one, {"_id": event_id}, {"$set": {"state": CLOSED}})
        )

    async def add_event_media(self, event_id: str, media: EventMedia) -> None:
        await self._run(
            partial(
                self._events.update_one,
                {"_id": event_id, "media._id": {"$ne": media.id}},
                {"$push": {"media": _event_media(media)}},
            )
        )

    async def remove_event_media(self, event_id: str, media_id: str) -> bool:
        result = await self._run(
            partial(
                self._events.update_one, {"_id": event_id}, {"$pull": {"media": {"_id": media_id}}}
            )
        )
        return result.modified_count > 0

    # Chat.

    async def append_chat(
        self, event_id: str, first_seq: int, messages: Sequence[ChatMessage]
    ) -> None:
        if not messages:  # insert_many refuses an empty batch
            await trio.lowlevel.checkpoint()  # still a checkpoint, as every store call is
            return
        documents = [
            {
                "event_id": event_id, "seq": first_seq + i, "user_id": m.user_id,
                "user_name": m.user_name, "user_image_id": m.user_image_id, "message": m.message,
            }
            for i, m in enumerate(messages)
        ]
        await self._run(partial(self._chat.insert_many, documents, ordered=True))

    async def chat(self, event_id: str, start: int = 0) -> list[ChatMessage]:
        def select() -> list[ChatMessage]:
            event = self._events.find_one(
                {"_id": event_id}, {"_id": 1, "chat_messages": {"$slice": [start, _TO_THE_END]}}
            )
            legacy = (event or {}).get("chat_messages") or []
            # Non-empty `legacy` ends at line L; empty means start >= L. Either way the
            # collection's part starts at start + len(legacy).
            cursor = self._chat.find(
                {"event_id": event_id, "seq": {"$gte": start + len(legacy)}}, _CHAT_FIELDS
            ).sort("seq", ASCENDING)
            return [_chat_message(line) for line in [*legacy, *cursor]]

        return await self._run(select)

    async def chat_length(self, event_id: str) -> int:
        def count() -> int:
            legacy = list(self._events.aggregate([
                {"$match": {"_id": event_id}},
                {"$project": {"lines": {"$size": {"$ifNull": ["$chat_messages", []]}}}},
            ]))
            last = self._chat.find_one(
                {"event_id": event_id}, {"seq": 1}, sort=[("seq", DESCENDING)]
            )
            return max(legacy[0]["lines"] if legacy else 0, last["seq"] + 1 if last else 0)

        return await self._run(count)


def _create_indexes(db: Database[Document]) -> None:
    for collection, name, keys, options in _INDEXES:
        try:
            db[collection].create_index(keys, name=name, **options)
        except OperationFailure as exc:
            log.error(
                "could not create a MongoDB index; serving without the guarantee it gives",
                extra={"index": name, "collection": collection, "cause": str(exc)},
            )


def _utc(moment: datetime) -> datetime:
    """pymongo (without tz_aware) and mongomock decode a BSON date as a naive UTC datetime."""
    return moment.replace(tzinfo=UTC)


def _user(document: Document) -> User:
    return User(
        id=document["_id"], name=document["name"], phone=document["phone"],
        password_hash=document["password"], image_id=document.get("image_id") or None,
        phone_code=document.get("phone_code", "+7"),
    )


def _coordinates(coordinates: Coordinates) -> Document:
    # The older backend decodes doubles only; an int from JSON must not be stored as int32.
    return {"x": float(coordinates.x), "y": float(coordinates.y)}


def _event_media(media: EventMedia) -> Document:
    return {"_id": media.id, "content_type": media.content_type}


def _event(document: Document) -> Event:
    coordinates = document["coordinates"]
    return Event(
        id=document["_id"], owner_id=document["owner_id"], name=document["name"],
        address=document["address"],
        coordinates=Coordinates(float(coordinates["x"]), float(coordinates["y"])),
        created_at=_utc(document["created_at"]), is_open=document["state"] == OPEN,
        media=tuple(
            EventMedia(media["_id"], media["content_type"]) for media in document.get("media") or ()
        ),
    )


def _chat_message(line: Document) -> ChatMessage:
    return ChatMessage(line["user_id"], line["user_name"], line["user_image_id"], line["message"])
