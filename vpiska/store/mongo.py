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

Fencing (vpiska/store/base.py). MongoDB without a replica set has no transaction across
documents, but an update of one document is atomic with its filter. So everything a fenced write
must check lives on the event document, and every fenced write is, or starts with, one
conditional update of that document. Three fields, absent on documents written before fencing
(and by the older Go backend, which ignores them):

- `epoch`: the claimed epoch; absent means 0. `claimant`: the node that claimed it; absent on
  events claimed before claimants were kept (then nobody may claim that epoch again).
  `claim_event` sets both with one `find_one_and_update` filtered on `epoch < new`, or `epoch
  == new` with `claimant` the same node, so two claims cannot both win.
- `chat_next`: the seq after the last line a fenced writer committed; `claim_event` sets it to
  the chat's length, each fenced `append_chat` advances it.
- `chat_pending`: the last fenced chat batch itself, as the documents of `chat_messages`.

Event fields and media (`update_event`, `close_event`, `add_event_media`, `remove_event_media`):
the update's filter holds `epoch: <writer's epoch>`, so the check and the write are one
operation. When nothing matched, a read of the epoch tells a stale writer (StaleEpoch) from an
event that is unknown or needed no change.

Chat lines live in their own collection, one document per line, so fencing the insert itself is
impossible. A fenced `append_chat` therefore commits the batch on the event document first: one
update filtered on `epoch` and on `chat_next <= first_seq` sets `chat_pending` to the batch and
`chat_next` past it. From that moment the lines are the store's, exactly as a committed sqlite
transaction; the writer then copies them into `chat_messages` with `insert_many`. If the writer
dies or is paused before the copy, whoever comes next copies them: `claim_event` and
`chat_length` copy a `chat_pending` batch that `chat_messages` lacks, before they count lines.
The copy is idempotent (the unique (event_id, seq) index turns a second copy into duplicate-key
errors, which are ignored), so the old writer's late copy and the new owner's are harmless
together. Hence:

- a stale owner whose batch reaches the event document after the claim writes nothing (its
  update matches no document: StaleEpoch);
- a stale owner whose batch reached it before the claim wrote lines the store had committed, and
  the claim counts them; `chat_length` after `claim_event` is right, and no seq is taken twice
  or left empty;
- the range check on `chat_next` is what makes ignoring duplicates sound: after the commit no
  other writer can commit these seqs, so a duplicate can only be a copy of this very batch.

What this leaves unfenced, on purpose or by MongoDB: writes with `epoch=None` (single-node mode)
and the older Go backend's writes, which never look at these fields; lines of an event the store
does not know (there is no document to hold a claim); and the durability of the claim itself:
with `w=1` on a replica set, a claim acknowledged by a primary that then fails over can be rolled
back, so a cluster should run with `w=majority` (a `DB_CONNECTION` option). Costs: a fenced
batch is two writes instead of one (the event document, then `chat_messages`), and the batch is
written twice; readers of `chat` see a committed batch once it is copied, which its writer does
before it announces the lines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import pymongo
import trio
from bson.int64 import Int64
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure
from pymongo.results import UpdateResult

from vpiska import metrics
from vpiska.domain import ChatMessage, Coordinates, Event, EventMedia, Media, User
from vpiska.errors import DomainError, ErrorCode
from vpiska.store.base import StaleEpoch, check_claim, check_epoch, clash_error

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_CALL_DURATION = metrics.STORE_CALL_DURATION.labels(store="mongodb")
Document = dict[str, Any]

OPEN, CLOSED = 0, 1

# Threads that may talk to the server at once: below pymongo's default pool of 100
# connections, so a thread never waits for a connection while holding a limiter slot.
THREADS = 32

# The longest a ping may wait for its answer (StoreHealth keeps its own, shorter deadline).
PING_TIMEOUT_SECONDS = 10.0

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
# backend's stale `users` list and its chat, which `chat` reads on its own, and the last fenced
# chat batch (see "Fencing").
_EVENT_FIELDS = {"users": 0, "chat_messages": 0, "chat_pending": 0}
_CHAT_FIELDS = {"_id": 0, "user_id": 1, "user_name": 1, "user_image_id": 1, "message": 1,
                "sent_at": 1, "client_id": 1}

_DUPLICATE_KEY = 11000  # the server's error code for a write that breaks a unique index


class MongoStore:
    """Store on one MongoDB database. Resource handling: `open` (or `from_client`) creates the
    indexes; `aclose` closes the client, which the store owns from then on."""

    def __init__(self, client: MongoClient[Document], db: Database[Document], threads: int) -> None:
        self._client = client
        self.database = db  # media bytes live beside the records, in GridFS (store/gridfs.py)
        self._users = db["users"]
        self._events = db["events"]
        self._media = db["media"]
        self._chat = db["chat_messages"]
        self._limiter = trio.CapacityLimiter(threads)
        self._ping_limiter = trio.CapacityLimiter(1)  # `ping` waits behind no call

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

    async def _run(self, fn: Callable[[], _T],
                   limiter: trio.CapacityLimiter | None = None) -> _T:
        # Abandoned when cancelled: a call on a connection the network froze would otherwise
        # hold its caller until the path heals, and a room fenced for want of its store
        # (vpiska/cluster/node.py) would never end. The thread goes on until the driver gives
        # up; what it writes meanwhile is fenced like any stale owner's write.
        limiter = self._limiter if limiter is None else limiter
        with _CALL_DURATION.time():
            return await trio.to_thread.run_sync(fn, limiter=limiter, abandon_on_cancel=True)

    async def aclose(self) -> None:
        await self._run(self._client.close)

    async def maintain(self) -> None:
        await trio.sleep_forever()  # nothing to look after

    async def ping(self) -> None:
        """The server's ping, on a thread slot of its own: it says whether MongoDB answers,
        not how long this node's calls queue (a node busy with a reconnect storm would take
        its own backlog for a lost store and step aside; vpiska/store/health.py). The client's
        pool holds more connections than the calls' threads, so one is free for it."""
        def ping() -> None:
            # Bounded, unlike the other calls (pymongo's default has no socket timeout): a
            # ping sent on a connection the network then dropped without a word must fail in
            # time for the next one, on a new connection, to see the server back.
            with pymongo.timeout(PING_TIMEOUT_SECONDS):
                self._client.admin.command("ping")

        await self._run(ping, limiter=self._ping_limiter)

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

    async def user_ids(self, limit: int) -> list[str]:
        def read() -> list[str]:
            found = self._users.find({}, {"_id": 1}).limit(limit)
            return [str(document["_id"]) for document in found]
        return await self._run(read)

    def _one_user(self, query: Document) -> User | None:
        document = self._users.find_one(query)
        return _user(document) if document else None

    async def delete_user(self, user_id: str) -> User | None:
        document = await self._run(partial(self._users.find_one_and_delete, {"_id": user_id}))
        return _user(document) if document else None

    async def anonymise_chat(self, user_id: str) -> list[str]:
        """A collection scan, on purpose: an index on `chat_messages.user_id` would cost every
        chat write for an account deletion now and then (on sqlite it made them about three
        times slower)."""

        def anonymise() -> list[str]:
            touched = [str(event_id) for event_id in self._chat.distinct(
                "event_id", {"user_id": user_id})]
            self._chat.update_many({"user_id": user_id},
                                   {"$set": {"user_name": "", "user_image_id": ""}})
            # The older backend's chat, embedded in its event documents.
            for event in self._events.find({"chat_messages.user_id": user_id},
                                           {"chat_messages.user_id": 1}):
                mine = [index for index, line in enumerate(event["chat_messages"])
                        if line.get("user_id") == user_id]
                self._events.update_one({"_id": event["_id"]}, {"$set": {
                    f"chat_messages.{index}.{field}": ""
                    for index in mine for field in ("user_name", "user_image_id")}})
                if event["_id"] not in touched:
                    touched.append(str(event["_id"]))
            return touched

        return await self._run(anonymise)

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

    async def set_user_image(self, user_id: str, image_id: str) -> User | None:
        # Compare-and-set, not find_one_and_update(BEFORE): the same on mongod, but
        # SecantusDB's findAndModify reads its pre-image before it writes, so two concurrent
        # swaps could both answer one image (one left behind, one deleted twice), while its
        # conditional update is atomic. One more round trip, for a rare request.
        def swap() -> User | None:
            while True:
                document = self._users.find_one({"_id": user_id})
                if document is None:
                    return None
                swapped = self._users.update_one(
                    {"_id": user_id, "image_id": document.get("image_id")},
                    {"$set": {"image_id": image_id}})
                if swapped.matched_count:
                    return _user(document)

        return await self._run(swap)

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

    async def media_ids(self, after: str, limit: int) -> list[str]:
        def select() -> list[str]:
            found = self._media.find({"_id": {"$gt": after}}, {"_id": 1})
            return [document["_id"] for document in found.sort("_id", ASCENDING).limit(limit)]

        return await self._run(select)

    async def media_found(self, media_ids: Sequence[str]) -> set[str]:
        def select() -> set[str]:
            found = self._media.find({"_id": {"$in": list(media_ids)}}, {"_id": 1})
            return {str(document["_id"]) for document in found}

        return await self._run(select) if media_ids else set()

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

    async def claim_event(self, event_id: str, epoch: int, claimant: str) -> Event | None:
        def claim() -> Event | None:
            claimable: list[Document] = [{"epoch": {"$lt": epoch}},
                                         {"epoch": epoch, "claimant": claimant}]
            if epoch > 0:
                claimable.append({"epoch": None})  # never claimed: at 0
            document = self._events.find_one_and_update(
                {"_id": event_id, "$or": claimable},
                {"$set": {"epoch": epoch, "claimant": claimant}},
                _EVENT_FIELDS,
                return_document=ReturnDocument.AFTER,
            )
            if document is None:
                held = self._events.find_one({"_id": event_id}, {"epoch": 1, "claimant": 1})
                if held is None:
                    return None
                check_claim(event_id, epoch, claimant, int(held.get("epoch") or 0),
                            held.get("claimant"))
                raise AssertionError(f"event {event_id}: claims only move forward")
            # No older owner can commit a batch now; the last one committed is copied, if its
            # writer has not, and counted.
            length = self._chat_length(event_id)
            numbered = self._events.update_one(
                {"_id": event_id, "epoch": epoch, "claimant": claimant},
                {"$set": {"chat_next": length}})
            if numbered.matched_count == 0:  # a newer claim came in between
                raise StaleEpoch(event_id, epoch, self._claimed_epoch(event_id) or epoch)
            return _event(document)

        return await self._run(claim)

    def _claimed_epoch(self, event_id: str) -> int | None:
        """The event's claimed epoch; None if the event is unknown."""
        document = self._events.find_one({"_id": event_id}, {"epoch": 1})
        return None if document is None else int(document.get("epoch") or 0)

    def _update_event(self, event_id: str, epoch: int | None, query: Document,
                      update: Document) -> UpdateResult:
        """One update of the event document; with an epoch, only if it is the claimed one."""
        fence = {} if epoch is None else _epoch_is(epoch)
        result = self._events.update_one({"_id": event_id, **query, **fence}, update)
        if result.matched_count == 0 and epoch is not None:
            # Unknown, stale, or (add_event_media) nothing to change: tell them apart.
            claimed = self._claimed_epoch(event_id)
            if claimed is not None:
                check_epoch(event_id, epoch, claimed)
        return result

    async def update_event(
        self, event_id: str, address: str, coordinates: Coordinates, *, epoch: int | None = None
    ) -> None:
        changes = {"address": address, "coordinates": _coordinates(coordinates)}
        await self._run(partial(self._update_event, event_id, epoch, {}, {"$set": changes}))

    async def close_event(self, event_id: str, *, epoch: int | None = None) -> None:
        await self._run(
            partial(self._update_event, event_id, epoch, {}, {"$set": {"state": CLOSED}}))

    async def add_event_media(
        self, event_id: str, media: EventMedia, *, epoch: int | None = None
    ) -> None:
        await self._run(
            partial(
                self._update_event, event_id, epoch, {"media._id": {"$ne": media.id}},
                {"$push": {"media": _event_media(media)}},
            )
        )

    async def remove_event_media(
        self, event_id: str, media_id: str, *, epoch: int | None = None
    ) -> bool:
        result = await self._run(
            partial(
                self._update_event, event_id, epoch, {}, {"$pull": {"media": {"_id": media_id}}}
            )
        )
        return result.modified_count > 0

    async def ban_member(self, event_id: str, user_id: str, *, epoch: int | None = None) -> None:
        await self._run(partial(self._update_event, event_id, epoch, {},
                                {"$addToSet": {"banned_user_ids": user_id}}))

    # Chat.

    async def append_chat(
        self, event_id: str, first_seq: int, messages: Sequence[ChatMessage], *,
        epoch: int | None = None,
    ) -> None:
        if not messages and epoch is None:  # insert_many refuses an empty batch
            await trio.lowlevel.checkpoint()  # still a checkpoint, as every store call is
            return
        documents = [_chat_document(event_id, first_seq + i, m) for i, m in enumerate(messages)]
        if epoch is None:
            await self._run(partial(self._chat.insert_many, documents, ordered=True))
        else:
            await self._run(partial(self._append_fenced, event_id, first_seq, documents, epoch))

    def _append_fenced(self, event_id: str, first_seq: int, documents: list[Document],
                       epoch: int) -> None:
        """Commit the batch on the event document, then copy it (see "Fencing")."""
        if not documents:  # nothing to commit: only the check
            if (claimed := self._claimed_epoch(event_id)) is not None:
                check_epoch(event_id, epoch, claimed)
            return
        end = first_seq + len(documents)
        committed = self._events.update_one(
            {"_id": event_id, **_epoch_is(epoch),
             "$or": [{"chat_next": {"$lte": first_seq}}, {"chat_next": None}]},
            {"$set": {"chat_pending": documents, "chat_next": end}},
        )
        if committed.matched_count == 0:
            document = self._events.find_one({"_id": event_id}, {"epoch": 1, "chat_next": 1})
            if document is None:  # an unknown event: no claim to respect, written as unfenced
                self._chat.insert_many(documents, ordered=True)
                return
            check_epoch(event_id, epoch, int(document.get("epoch") or 0))
            # The epoch is right, so the range is: lines from first_seq on are committed.
            raise DuplicateKeyError(
                f"event {event_id}: chat lines from {first_seq} on exist (next is"
                f" {document.get('chat_next')})", _DUPLICATE_KEY)
        self._copy_chat(documents)

    def _copy_chat(self, documents: list[Document]) -> None:
        """Insert committed chat lines into `chat_messages`, those that are not there yet."""
        if not documents:
            return
        try:
            # Copies: insert_many adds an `_id` to what it is given.
            self._chat.insert_many([dict(line) for line in documents], ordered=False)
        except BulkWriteError as failure:
            details = failure.details
            if details.get("writeConcernErrors") or any(
                error.get("code") != _DUPLICATE_KEY for error in details.get("writeErrors", ())
            ):
                raise

    async def chat(self, event_id: str, start: int = 0) -> list[ChatMessage]:
        return await self.chat_slice(event_id, start, _TO_THE_END)

    async def chat_slice(self, event_id: str, start: int, stop: int) -> list[ChatMessage]:
        stop = min(stop, _TO_THE_END)
        if stop <= start:
            await trio.lowlevel.checkpoint()
            return []

        def select() -> list[ChatMessage]:
            event = self._events.find_one(
                {"_id": event_id}, {"_id": 1, "chat_messages": {"$slice": [start, stop - start]}}
            )
            legacy = (event or {}).get("chat_messages") or []
            # Non-empty `legacy` ends at line L (or at `stop`); empty means start >= L. Either
            # way the collection's part starts at start + len(legacy).
            cursor = self._chat.find(
                {"event_id": event_id, "seq": {"$gte": start + len(legacy), "$lt": stop}},
                _CHAT_FIELDS,
            ).sort("seq", ASCENDING)
            return [_chat_message(line) for line in [*legacy, *cursor]]

        return await self._run(select)

    async def chat_client_ids(self, event_id: str, start: int = 0) -> dict[tuple[str, str], int]:
        def select() -> dict[tuple[str, str], int]:
            self._chat_length(event_id)  # copies a committed batch its writer did not
            cursor = self._chat.find({"event_id": event_id, "seq": {"$gte": start},
                                      "client_id": {"$type": "string"}},
                                     {"_id": 0, "user_id": 1, "client_id": 1, "seq": 1})
            return {(line["user_id"], line["client_id"]): int(line["seq"]) for line in cursor}

        return await self._run(select)

    async def erase_chat(self, event_id: str, seq: int, *, epoch: int | None = None) -> bool:
        return await self._run(partial(self._erase_chat, event_id, seq, epoch))

    def _erase_chat(self, event_id: str, seq: int, epoch: int | None) -> bool:
        """An older event's embedded line is erased in the event document, fenced as one
        update; a line of the collection after that update's fenced check of the event (the
        collection's line cannot carry the epoch). Erasing is idempotent, so a fenced-off owner
        that slips one in between does what the new owner would do when asked."""
        if seq < 0:
            return False
        field = f"chat_messages.{seq}"
        # Not matched: no such embedded line, or (raised) a stale epoch.
        if self._update_event(event_id, epoch, {field: {"$exists": True}},
                              {"$set": {f"{field}.message": ""}}).matched_count:
            return True
        self._chat_length(event_id)  # the line may be in a committed batch not copied yet
        return self._chat.update_one({"event_id": event_id, "seq": seq},
                                     {"$set": {"message": ""}}).matched_count > 0

    async def chat_length(self, event_id: str) -> int:
        return await self._run(partial(self._chat_length, event_id))

    def _chat_length(self, event_id: str) -> int:
        """The chat's length, after copying the last fenced batch if its writer did not."""
        [event] = list(self._events.aggregate([
            {"$match": {"_id": event_id}},
            {"$project": {"lines": {"$size": {"$ifNull": ["$chat_messages", []]}},
                          "pending": "$chat_pending"}},
        ])) or [{}]
        pending: list[Document] = event.get("pending") or []
        if pending:
            copied = self._chat.count_documents({
                "event_id": event_id,
                "seq": {"$gte": pending[0]["seq"], "$lte": pending[-1]["seq"]},
            })
            if copied < len(pending):
                self._copy_chat(pending)
        last = self._chat.find_one({"event_id": event_id}, {"seq": 1}, sort=[("seq", DESCENDING)])
        return max(int(event.get("lines", 0)), last["seq"] + 1 if last else 0)


def _create_indexes(db: Database[Document]) -> None:
    for collection, name, keys, options in _INDEXES:
        try:
            db[collection].create_index(keys, name=name, **options)
        except OperationFailure as exc:
            log.error(
                "could not create a MongoDB index; serving without the guarantee it gives",
                extra={"index": name, "collection": collection, "cause": str(exc)},
            )


def _epoch_is(epoch: int) -> Document:
    """A filter: the event's claimed epoch is `epoch` (a document without one is at 0)."""
    return {"epoch": {"$in": [0, None]}} if epoch == 0 else {"epoch": epoch}


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
        banned=frozenset(str(user_id) for user_id in document.get("banned_user_ids") or ()),
    )


def _chat_document(event_id: str, seq: int, line: ChatMessage) -> Document:
    """A line of `chat_messages`; the fields v2 added only when set, so a line without them is
    the document vpiska wrote before."""
    document: Document = {
        "event_id": event_id, "seq": seq, "user_id": line.user_id, "user_name": line.user_name,
        "user_image_id": line.user_image_id, "message": line.message,
    }
    if line.sent_at is not None:
        document["sent_at"] = line.sent_at
    if line.client_id is not None:
        document["client_id"] = line.client_id
    return document


def _chat_message(line: Document) -> ChatMessage:
    sent_at = line.get("sent_at")
    client_id = line.get("client_id")
    return ChatMessage(line["user_id"], line["user_name"], line["user_image_id"], line["message"],
                       _utc(sent_at) if isinstance(sent_at, datetime) else None,
                       client_id if isinstance(client_id, str) else None)
