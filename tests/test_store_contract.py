"""One contract for every Store: the server must not be able to tell sqlite from MongoDB.

Each test runs on sqlite, on MongoStore over mongomock, on the in-memory store the actor tests
use as a fake, and on a real MongoDB wire server (tests/helpers/mongodb_fixtures.py: SecantusDB,
or the server VPISKA_TEST_MONGODB_URL names). The tests on the
`mongo` fixture check what only MongoDB has: the older Go backend's document shapes, its
embedded chat arrays, and an older database whose data breaks an index.

Fencing (vpiska/store/base.py) is part of the contract: a claim by a newer epoch refuses every
write of an older one and changes nothing; `epoch=None` is unfenced.

Timestamps are whole milliseconds: BSON dates keep no more.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import mongomock
import pymongo
import pymongo.errors
import pytest
import trio
import trio.testing
from bson.int64 import Int64

from tests.helpers.mongodb_fixtures import new_database_name
from vpiska.config import Config, StoreLocation
from vpiska.domain import ChatMessage, Coordinates, Event, EventMedia, Media, User, new_id
from vpiska.errors import DomainError, ErrorCode
from vpiska.store import EpochTaken, MemoryStore, StaleEpoch, Store, open_store
from vpiska.store import memory as memory_store
from vpiska.store.mongo import THREADS, MongoStore
from vpiska.store.sqlite import SqliteStore

T0 = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


@dataclasses.dataclass
class MongoServer:
    """A MongoDB (real or mongomock) that tests open stores on, in throwaway databases."""

    client: Any  # pymongo or mongomock client, to seed and inspect raw documents
    connect: Callable[[str], Awaitable[MongoStore]]
    db_names: list[str] = dataclasses.field(default_factory=list)

    def new_database(self) -> Any:
        name = new_database_name()
        self.db_names.append(name)
        return self.client[name]

    @asynccontextmanager
    async def store(self, db: Any) -> AsyncIterator[MongoStore]:
        store = await self.connect(db.name)
        try:
            yield store
        finally:
            await store.aclose()


@contextmanager
def mongo_server(kind: str, request: pytest.FixtureRequest) -> Iterator[MongoServer]:
    """mongomock, or the session's MongoDB wire server (asked for only then, so the mongomock
    tests need no server)."""
    if kind == "mongomock":
        fake: Any = mongomock.MongoClient()
        # One thread: mongomock's unique check is not atomic across threads (see from_client).
        yield MongoServer(fake, lambda name: MongoStore.from_client(fake, name, threads=1))
        return
    url: str = request.getfixturevalue("mongodb_url")
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url)
    server = MongoServer(client, partial(MongoStore.open, url))
    try:
        yield server
    finally:
        for name in server.db_names:
            client.drop_database(name)
        client.close()


@pytest.fixture(params=["sqlite", "mongomock", "memory", "mongodb"])
def store_opener(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], Awaitable[Store]]]:
    """How to open this param's store: a sync fixture, so that a skip keeps its reason."""
    if request.param == "sqlite":
        yield partial(SqliteStore.open, tmp_path / "db.sqlite")
        return
    if request.param == "memory":

        async def new_memory_store() -> Store:
            return MemoryStore()

        yield new_memory_store
        return
    with mongo_server(request.param, request) as server:
        yield lambda: server.connect(server.new_database().name)


@pytest.fixture
async def store(store_opener: Callable[[], Awaitable[Store]]) -> AsyncIterator[Store]:
    opened = await store_opener()
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture(params=["mongomock", "mongodb"])
def mongo(request: pytest.FixtureRequest) -> Iterator[MongoServer]:
    with mongo_server(request.param, request) as server:
        yield server


def a_user(name: str = "alice", phone: str = "9001112233") -> User:
    return User(id=new_id(), name=name, phone=phone, password_hash="hash-" + name)


def an_event(owner_id: str, *, at: datetime = T0, name: str = "party") -> Event:
    return Event(
        id=new_id(), owner_id=owner_id, name=name, address="Lenina 1",
        coordinates=Coordinates(55.75, 37.5), created_at=at,
    )


def a_line(n: int) -> ChatMessage:
    return ChatMessage(user_id=f"user-{n % 3}", user_name=f"name-{n % 3}", user_image_id="",
                       message=f"line {n}")


async def refused(call: Awaitable[object]) -> tuple[ErrorCode, ...]:
    with pytest.raises(DomainError) as caught:
        await call
    return caught.value.codes


# Users.


async def test_user_round_trip(store: Store) -> None:
    user = a_user()
    await store.add_user(user)
    assert await store.user_by_id(user.id) == user
    assert await store.user_by_phone(user.phone) == user
    assert user.image_id is None
    assert await store.user_by_id(new_id()) is None
    assert await store.user_by_phone("0000000000") is None


async def test_user_ids_are_those_of_the_users_up_to_the_limit(store: Store) -> None:
    assert await store.user_ids(10) == []
    users = [a_user(f"user{i}", f"900111223{i}") for i in range(5)]
    for user in users:
        await store.add_user(user)
    assert sorted(await store.user_ids(10)) == sorted(user.id for user in users)
    some = await store.user_ids(3)
    assert len(some) == 3
    assert set(some) <= {user.id for user in users}


async def test_user_name_and_phone_are_unique(store: Store) -> None:
    alice = a_user("alice", "9000000001")
    await store.add_user(alice)
    assert await refused(store.add_user(a_user("alice", "9000000002"))) == (
        ErrorCode.NAME_ALREADY_USE,)
    assert await refused(store.add_user(a_user("bob", "9000000001"))) == (
        ErrorCode.PHONE_ALREADY_USE,)
    await store.add_user(a_user("bob", "9000000002"))
    # Both taken, even by two different users.
    assert await refused(store.add_user(a_user("alice", "9000000002"))) == (
        ErrorCode.NAME_AND_PHONE_ALREADY_USE,)
    assert await store.user_by_phone("9000000001") == alice


async def test_update_user(store: Store) -> None:
    alice, bob = a_user("alice", "9000000001"), a_user("bob", "9000000002")
    await store.add_user(alice)
    await store.add_user(bob)

    renamed = await store.update_user(alice.id, name="alicia", phone=None)
    assert renamed == dataclasses.replace(alice, name="alicia")
    moved = await store.update_user(alice.id, name=None, phone="9000000003")
    assert moved == dataclasses.replace(alice, name="alicia", phone="9000000003")
    assert await store.update_user(alice.id, name=None, phone=None) == moved
    # Her own current values never clash with herself.
    assert await store.update_user(alice.id, name="alicia", phone="9000000003") == moved
    assert await store.update_user(new_id(), name="carol", phone=None) is None


async def test_update_user_clash(store: Store) -> None:
    alice, bob = a_user("alice", "9000000001"), a_user("bob", "9000000002")
    await store.add_user(alice)
    await store.add_user(bob)

    assert await refused(store.update_user(alice.id, name="bob", phone=None)) == (
        ErrorCode.NAME_ALREADY_USE,)
    assert await refused(store.update_user(alice.id, name="alice", phone="9000000002")) == (
        ErrorCode.PHONE_ALREADY_USE,)
    assert await refused(store.update_user(alice.id, name="bob", phone="9000000002")) == (
        ErrorCode.NAME_AND_PHONE_ALREADY_USE,)
    assert await store.user_by_id(alice.id) == alice


async def test_password_and_image(store: Store) -> None:
    user = a_user()
    await store.add_user(user)
    await store.set_password_hash(user.id, "new-hash")
    image_id = new_id()
    await store.set_user_image(user.id, image_id)
    assert await store.user_by_id(user.id) == dataclasses.replace(
        user, password_hash="new-hash", image_id=image_id)


async def test_setting_an_image_answers_the_user_as_it_was(store: Store) -> None:
    user = a_user()
    await store.add_user(user)
    first, second = new_id(), new_id()
    assert await store.set_user_image(user.id, first) == user
    assert await store.set_user_image(user.id, second) == dataclasses.replace(user, image_id=first)
    assert await store.user_by_id(user.id) == dataclasses.replace(user, image_id=second)
    assert await store.set_user_image(new_id(), first) is None


async def test_concurrent_image_sets_each_replace_a_different_image(store: Store) -> None:
    """What lets the avatar's replacement delete the image it replaced without an orphan: of
    concurrent sets, each one's "before" is a different image, and never the one left set."""
    user, initial = a_user(), new_id()
    await store.add_user(user)
    await store.set_user_image(user.id, initial)
    images = [new_id() for _ in range(20)]
    replaced: list[str | None] = []

    async def set_image(image_id: str) -> None:
        before = await store.set_user_image(user.id, image_id)
        assert before is not None
        replaced.append(before.image_id)

    async with trio.open_nursery() as nursery:
        for image_id in images:
            nursery.start_soon(set_image, image_id)
    left = await store.user_by_id(user.id)
    assert left is not None
    assert sorted(map(str, [*replaced, left.image_id])) == sorted([initial, *images])


async def test_concurrent_sign_ups_with_one_phone(store: Store) -> None:
    refusals: list[tuple[ErrorCode, ...]] = []
    accepted: list[User] = []

    async def sign_up(n: int) -> None:
        user = a_user(f"user{n}", "9005550000")
        try:
            await store.add_user(user)
        except DomainError as error:
            refusals.append(error.codes)
        else:
            accepted.append(user)

    async with trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(sign_up, n)

    assert len(accepted) == 1
    assert refusals == [(ErrorCode.PHONE_ALREADY_USE,)] * 49
    assert await store.user_by_phone("9005550000") == accepted[0]


# Media metadata.


async def test_media(store: Store) -> None:
    media = Media(id=new_id(), name="cat.jpg", content_type="image/jpeg", size=5 * 2**30,
                  last_modified=T0)
    await store.add_media(media)
    assert await store.media(media.id) == media
    assert await store.media(new_id()) is None
    assert await store.delete_media(media.id) is True
    assert await store.media(media.id) is None
    assert await store.delete_media(media.id) is False


async def test_media_ids_page_through_every_record_in_order(store: Store) -> None:
    ids = sorted(new_id() for _ in range(5))
    for media_id in reversed(ids):
        await store.add_media(Media(media_id, "m", "image/png", 1, T0))
    assert await store.media_ids("", 2) == ids[:2]
    assert await store.media_ids(ids[1], 2) == ids[2:4]
    assert await store.media_ids(ids[3], 2) == ids[4:]
    assert await store.media_ids(ids[4], 2) == []
    await store.delete_media(ids[2])
    assert await store.media_ids(ids[0], 10) == [ids[1], ids[3], ids[4]]


async def test_media_found_says_which_ids_have_a_record(store: Store) -> None:
    recorded = [new_id() for _ in range(3)]
    for media_id in recorded:
        await store.add_media(Media(media_id, "a.png", "image/png", 1, T0))
    unknown = new_id()
    assert await store.media_found([recorded[0], unknown, recorded[2]]) == {
        recorded[0], recorded[2]}
    assert await store.media_found([unknown]) == set()
    assert await store.media_found([]) == set()


def some_media(content_type: str = "image/png") -> Media:
    return Media(id=new_id(), name="m", content_type=content_type, size=1, last_modified=T0)


async def test_media_an_event_lists_is_in_use_open_or_closed(store: Store) -> None:
    attached, listed_at_creation, detached = some_media(), some_media(), some_media()
    for media in (attached, listed_at_creation, detached):
        await store.add_media(media)
    event = dataclasses.replace(
        an_event(new_id()), media=(EventMedia(listed_at_creation.id, "image/png"),))
    await store.add_event(event)
    await store.add_event_media(event.id, EventMedia(attached.id, "image/png"))
    await store.add_event_media(event.id, EventMedia(detached.id, "image/png"))
    await store.remove_event_media(event.id, detached.id)

    assert await refused(store.delete_media(attached.id)) == (ErrorCode.MEDIA_IN_USE,)
    assert await refused(store.delete_media(listed_at_creation.id)) == (ErrorCode.MEDIA_IN_USE,)
    assert await store.delete_media(detached.id) is True
    await store.close_event(event.id)
    assert await refused(store.delete_media(attached.id)) == (ErrorCode.MEDIA_IN_USE,)
    assert await store.media(attached.id) == attached
    assert await store.media(listed_at_creation.id) == listed_at_creation


async def test_media_a_user_has_as_image_is_in_use(store: Store) -> None:
    old, new = some_media(), some_media()
    await store.add_media(old)
    await store.add_media(new)
    user = a_user()
    await store.add_user(user)
    await store.set_user_image(user.id, old.id)

    assert await refused(store.delete_media(old.id)) == (ErrorCode.MEDIA_IN_USE,)
    assert await store.media(old.id) == old
    await store.set_user_image(user.id, new.id)
    assert await store.delete_media(old.id) is True
    assert await refused(store.delete_media(new.id)) == (ErrorCode.MEDIA_IN_USE,)


async def test_unknown_media_is_not_found_even_when_referred_to(store: Store) -> None:
    """A reference to media that is gone (an older backend's data) does not make it exist."""
    gone = new_id()
    user = a_user()
    await store.add_user(user)
    await store.set_user_image(user.id, gone)
    event = an_event(new_id())
    await store.add_event(event)
    await store.add_event_media(event.id, EventMedia(gone, "image/png"))
    assert await store.delete_media(gone) is False


async def test_media_of_an_unknown_event_is_not_in_use(store: Store) -> None:
    media = some_media()
    await store.add_media(media)
    await store.add_event_media(new_id(), EventMedia(media.id, media.content_type))
    assert await store.delete_media(media.id) is True


# Events.


async def test_event_round_trip(store: Store) -> None:
    owner = new_id()
    event = an_event(owner)
    await store.add_event(event)
    assert await store.event(event.id) == event
    assert await store.open_event_of(owner) == event.id
    assert await store.event(new_id()) is None
    assert await store.open_event_of(new_id()) is None


async def test_event_inserted_with_media_keeps_it(store: Store) -> None:
    event = dataclasses.replace(
        an_event(new_id()), media=(EventMedia(new_id(), "image/png"), EventMedia(new_id(), "a/b")))
    await store.add_event(event)
    assert await store.event(event.id) == event


async def test_one_open_event_per_owner(store: Store) -> None:
    owner = new_id()
    first = an_event(owner)
    await store.add_event(first)
    assert await refused(store.add_event(an_event(owner))) == (ErrorCode.OWNER_ALREADY_HAS_EVENT,)

    await store.close_event(first.id)
    assert await store.event(first.id) == dataclasses.replace(first, is_open=False)
    assert await store.open_event_of(owner) is None
    # A closed event does not block a new one, nor does a second closed one clash.
    second = an_event(owner)
    await store.add_event(second)
    assert await store.open_event_of(owner) == second.id
    await store.close_event(second.id)
    await store.add_event(an_event(owner))


async def test_open_events_oldest_first(store: Store) -> None:
    late = an_event(new_id(), at=T0 + timedelta(minutes=5), name="late")
    early = an_event(new_id(), at=T0 - timedelta(days=1), name="early")
    middle = an_event(new_id(), at=T0 + timedelta(milliseconds=1), name="middle")
    closed = an_event(new_id(), at=T0, name="closed")
    for event in (late, closed, early, middle):
        await store.add_event(event)
    await store.close_event(closed.id)
    assert await store.open_events() == [early, middle, late]


async def test_update_event(store: Store) -> None:
    event = an_event(new_id())
    await store.add_event(event)
    await store.update_event(event.id, "Tverskaya 7", Coordinates(-1.25, 0))
    assert await store.event(event.id) == dataclasses.replace(
        event, address="Tverskaya 7", coordinates=Coordinates(-1.25, 0.0))


async def test_event_media(store: Store) -> None:
    event = an_event(new_id())
    await store.add_event(event)
    one, two, three = (EventMedia(new_id(), f"image/{n}") for n in ("png", "jpeg", "gif"))
    for media in (one, two, three, two):  # attaching twice keeps one, in its first place
        await store.add_event_media(event.id, media)
    stored = await store.event(event.id)
    assert stored is not None
    assert stored.media == (one, two, three)

    assert await store.remove_event_media(event.id, two.id) is True
    assert await store.remove_event_media(event.id, two.id) is False
    assert await store.remove_event_media(event.id, new_id()) is False
    await store.add_event_media(event.id, two)
    stored = await store.event(event.id)
    assert stored is not None
    assert stored.media == (one, three, two)
    assert (await store.open_events())[0].media == (one, three, two)


# Chat.


async def test_chat_in_batches(store: Store) -> None:
    event = an_event(new_id())
    await store.add_event(event)
    assert await store.chat_length(event.id) == 0
    assert await store.chat(event.id) == []

    lines = [a_line(n) for n in range(1000)]
    seq = 0
    for size in (1, 0, 7, 92, 400, 500):
        await store.append_chat(event.id, seq, lines[seq:seq + size])
        seq += size
        assert await store.chat_length(event.id) == seq

    assert await store.chat(event.id) == lines
    assert await store.chat(event.id, 990) == lines[990:]
    assert await store.chat(event.id, 1000) == []
    assert await store.chat(event.id, 5000) == []
    # Chats are per event.
    assert await store.chat(new_id()) == []
    assert await store.chat_length(new_id()) == 0


async def test_chat_seq_is_unique(store: Store) -> None:
    event = an_event(new_id())
    await store.add_event(event)
    await store.append_chat(event.id, 0, [a_line(0), a_line(1)])
    with pytest.raises(
        (sqlite3.IntegrityError, pymongo.errors.BulkWriteError, memory_store.IntegrityError)
    ):
        await store.append_chat(event.id, 1, [a_line(2)])
    assert await store.chat(event.id) == [a_line(0), a_line(1)]


async def test_ping(store: Store) -> None:
    await store.ping()


# Fencing.


@dataclasses.dataclass(frozen=True)
class Stored:
    """What the store holds of one event: what a refused write must leave as it was."""

    event: Event | None
    chat: list[ChatMessage]
    chat_length: int


async def stored(store: Store, event_id: str) -> Stored:
    return Stored(await store.event(event_id), await store.chat(event_id),
                  await store.chat_length(event_id))


def fenced_writes(
    store: Store, event_id: str, epoch: int | None, *, first_seq: int, attached: EventMedia,
) -> dict[str, Callable[[], Awaitable[object]]]:
    """Every write an event's actor makes, each with `epoch`; close last."""
    return {
        "append_chat": partial(
            store.append_chat, event_id, first_seq, [a_line(first_seq + n) for n in range(3)],
            epoch=epoch),
        "update_event": partial(
            store.update_event, event_id, "Fenced 9", Coordinates(9.5, -9.5), epoch=epoch),
        "add_event_media": partial(
            store.add_event_media, event_id, EventMedia(new_id(), "image/gif"), epoch=epoch),
        "remove_event_media": partial(
            store.remove_event_media, event_id, attached.id, epoch=epoch),
        "close_event": partial(store.close_event, event_id, epoch=epoch),
    }


async def claimed_event_with_a_chat(store: Store, epoch: int) -> tuple[Event, EventMedia]:
    """An event claimed at `epoch`, with two chat lines and one media written by that epoch."""
    attached = EventMedia(new_id(), "image/png")
    event = an_event(new_id())
    await store.add_event(event)
    assert await store.claim_event(event.id, epoch, "node-a") == event
    await store.append_chat(event.id, 0, [a_line(0), a_line(1)], epoch=epoch)
    await store.add_event_media(event.id, attached, epoch=epoch)
    return dataclasses.replace(event, media=(attached,)), attached


async def test_claim_then_write_with_that_epoch(store: Store) -> None:
    event, attached = await claimed_event_with_a_chat(store, 7)
    assert await stored(store, event.id) == Stored(event, [a_line(0), a_line(1)], 2)

    await store.append_chat(event.id, 2, [a_line(2)], epoch=7)
    await store.update_event(event.id, "Arbat 3", Coordinates(1.5, 2.5), epoch=7)
    extra = EventMedia(new_id(), "video/mp4")
    await store.add_event_media(event.id, extra, epoch=7)
    assert await store.remove_event_media(event.id, attached.id, epoch=7) is True
    assert await store.remove_event_media(event.id, attached.id, epoch=7) is False
    await store.close_event(event.id, epoch=7)

    assert await stored(store, event.id) == Stored(
        dataclasses.replace(event, address="Arbat 3", coordinates=Coordinates(1.5, 2.5),
                            media=(extra,), is_open=False),
        [a_line(0), a_line(1), a_line(2)], 3)


@pytest.mark.parametrize(
    "write", ["append_chat", "update_event", "add_event_media", "remove_event_media",
              "close_event"])
async def test_a_newer_claim_refuses_the_older_epochs_writes(store: Store, write: str) -> None:
    event, attached = await claimed_event_with_a_chat(store, 1)
    before = await stored(store, event.id)
    # The new owner claims, then reads where its chat goes on.
    assert await store.claim_event(event.id, 2, "node-a") == event
    assert await store.chat_length(event.id) == 2

    with pytest.raises(StaleEpoch) as refused_write:
        await fenced_writes(store, event.id, 1, first_seq=2, attached=attached)[write]()
    assert (refused_write.value.event_id, refused_write.value.epoch,
            refused_write.value.claimed) == (event.id, 1, 2)
    assert event.id in str(refused_write.value)
    assert "epoch 1" in str(refused_write.value)
    assert "epoch 2" in str(refused_write.value)
    assert await stored(store, event.id) == before

    # The new owner's writes go on from there.
    for call in fenced_writes(store, event.id, 2, first_seq=2, attached=attached).values():
        await call()
    after = await stored(store, event.id)
    assert after.chat == [a_line(n) for n in range(5)]
    assert after.event is not None
    assert not after.event.is_open
    assert after.event.address == "Fenced 9"


async def test_an_older_owner_stays_fenced_after_any_number_of_claims(store: Store) -> None:
    event, attached = await claimed_event_with_a_chat(store, 1)
    for epoch in (2, 3, 10):
        await store.claim_event(event.id, epoch, "node-a")
    before = await stored(store, event.id)
    for epoch in (1, 2, 3, 0):
        for name, call in fenced_writes(
                store, event.id, epoch, first_seq=2, attached=attached).items():
            with pytest.raises(StaleEpoch):
                await call()
            assert await stored(store, event.id) == before, (epoch, name)


async def test_unfenced_writes_ignore_the_claim(store: Store) -> None:
    """epoch=None: a single node without Redis, whatever epoch a cluster once claimed."""
    event, attached = await claimed_event_with_a_chat(store, 4)
    for call in fenced_writes(store, event.id, None, first_seq=2, attached=attached).values():
        await call()
    after = await stored(store, event.id)
    assert after.chat_length == 5
    assert after.event is not None
    assert not after.event.is_open
    # The claim is still there for fenced writers.
    with pytest.raises(StaleEpoch):
        await store.append_chat(event.id, 5, [a_line(5)], epoch=3)
    await store.append_chat(event.id, 5, [a_line(5)], epoch=4)


async def test_unclaimed_events_are_at_epoch_0(store: Store) -> None:
    event = an_event(new_id())
    await store.add_event(event)
    await store.append_chat(event.id, 0, [a_line(0)], epoch=0)
    await store.update_event(event.id, "Zero 0", Coordinates(0, 0), epoch=0)
    assert await store.chat_length(event.id) == 1
    await store.claim_event(event.id, 1, "node-a")
    with pytest.raises(StaleEpoch):
        await store.update_event(event.id, "Zero 1", Coordinates(0, 0), epoch=0)


async def test_a_write_above_the_claimed_epoch_is_a_bug(store: Store) -> None:
    """Equality, not "at least": an owner must claim before it writes."""
    event, attached = await claimed_event_with_a_chat(store, 1)
    before = await stored(store, event.id)
    for name, call in fenced_writes(store, event.id, 2, first_seq=2, attached=attached).items():
        with pytest.raises(AssertionError, match="claim_event must come first"):
            await call()
        assert await stored(store, event.id) == before, name


async def test_claim_with_an_older_epoch_is_refused(store: Store) -> None:
    event, _ = await claimed_event_with_a_chat(store, 5)
    with pytest.raises(StaleEpoch) as refused_claim:
        await store.claim_event(event.id, 4, "node-a")
    assert (refused_claim.value.epoch, refused_claim.value.claimed) == (4, 5)
    # Still claimed by 5, not by 4.
    await store.append_chat(event.id, 2, [a_line(2)], epoch=5)
    with pytest.raises(StaleEpoch):
        await store.append_chat(event.id, 3, [a_line(3)], epoch=4)


async def test_claim_is_idempotent_and_returns_the_event_in_any_state(store: Store) -> None:
    event, _ = await claimed_event_with_a_chat(store, 3)
    assert await store.claim_event(event.id, 3, "node-a") == event
    await store.append_chat(event.id, 2, [a_line(2)], epoch=3)
    assert await store.claim_event(event.id, 3, "node-a") == event
    assert await store.chat_length(event.id) == 3
    await store.close_event(event.id, epoch=3)
    closed = dataclasses.replace(event, is_open=False)
    assert await store.claim_event(event.id, 3, "node-a") == closed
    assert await store.claim_event(event.id, 8, "node-a") == closed
    assert await store.claim_event(new_id(), 1, "node-a") is None


async def test_a_claim_of_the_claimed_epoch_by_another_node_is_refused(store: Store) -> None:
    """Redis handed epoch 5 out twice (restarted empty, or failed over before it had the INCR):
    the second node is refused, whatever it believes, and the first writes on; the refused
    node comes back with an epoch above, and only then is the first one fenced."""
    event, attached = await claimed_event_with_a_chat(store, 5)  # by node-a
    before = await stored(store, event.id)
    with pytest.raises(EpochTaken) as taken:
        await store.claim_event(event.id, 5, "node-b")
    assert isinstance(taken.value, StaleEpoch)  # what a cluster node already handles
    assert (taken.value.event_id, taken.value.epoch, taken.value.claimed,
            taken.value.holder) == (event.id, 5, 5, "node-a")
    assert str(taken.value) == f"event {event.id}: epoch 5 was claimed already, by node node-a"
    assert await stored(store, event.id) == before

    assert await store.claim_event(event.id, 5, "node-a") == event  # its own retry
    await store.append_chat(event.id, 2, [a_line(2)], epoch=5)
    with pytest.raises(EpochTaken):  # refused again: still not node-b's
        await store.claim_event(event.id, 5, "node-b")

    assert await store.claim_event(event.id, 6, "node-b") == event
    for call in fenced_writes(store, event.id, 5, first_seq=3, attached=attached).values():
        with pytest.raises(StaleEpoch):
            await call()
    with pytest.raises(EpochTaken):  # the old owner cannot take its epoch back either
        await store.claim_event(event.id, 6, "node-a")
    await store.append_chat(event.id, 3, [a_line(3)], epoch=6)
    assert await store.chat(event.id) == [a_line(n) for n in range(4)]


async def test_two_nodes_claiming_one_epoch_at_once_one_wins(store: Store) -> None:
    event = an_event(new_id())
    await store.add_event(event)
    won: list[str] = []
    refused: list[tuple[str, str | None]] = []

    async def claim(node: str) -> None:
        try:
            await store.claim_event(event.id, 3, node)
        except EpochTaken as taken:
            refused.append((node, taken.holder))
        else:
            won.append(node)

    async with trio.open_nursery() as nursery:
        for node in ("node-a", "node-b", "node-c"):
            nursery.start_soon(claim, node)
    assert len(won) == 1
    assert sorted(refused) == sorted((node, won[0]) for node in ("node-a", "node-b", "node-c")
                                     if node != won[0])
    await store.append_chat(event.id, 0, [a_line(0)], epoch=3)
    assert await store.claim_event(event.id, 3, won[0]) == event


async def test_a_fenced_batch_at_a_taken_seq_writes_none_of_its_lines(store: Store) -> None:
    event, _ = await claimed_event_with_a_chat(store, 1)
    with pytest.raises((sqlite3.IntegrityError, pymongo.errors.PyMongoError,
                        memory_store.IntegrityError)):
        await store.append_chat(event.id, 1, [a_line(7), a_line(8)], epoch=1)
    assert await store.chat(event.id) == [a_line(0), a_line(1)]
    await store.append_chat(event.id, 2, [a_line(2)], epoch=1)
    assert await store.chat_length(event.id) == 3


async def test_an_unknown_event_has_no_claim_to_respect(store: Store) -> None:
    unknown = new_id()
    await store.append_chat(unknown, 0, [a_line(0)], epoch=3)
    await store.update_event(unknown, "x", Coordinates(1, 1), epoch=3)
    await store.close_event(unknown, epoch=3)
    assert await store.remove_event_media(unknown, new_id(), epoch=3) is False
    assert await store.chat(unknown) == [a_line(0)]
    assert await store.event(unknown) is None


# Calls as trio sees them.


async def test_every_call_is_a_checkpoint_and_a_cancelled_call_changes_nothing(
    store: Store,
) -> None:
    """A call cancelled before it runs raises Cancelled and leaves the store as it was."""
    user, event = a_user(), an_event(new_id())
    media = Media(new_id(), "a.png", "image/png", 1, T0)
    attached = EventMedia(media.id, media.content_type)
    calls: list[Callable[[], Awaitable[object]]] = [
        partial(store.add_user, user), partial(store.user_by_id, user.id),
        partial(store.user_by_phone, user.phone),
        partial(store.update_user, user.id, name="bob", phone=None),
        partial(store.set_password_hash, user.id, "h"),
        partial(store.set_user_image, user.id, media.id),
        partial(store.add_media, media), partial(store.media, media.id),
        partial(store.delete_media, media.id), partial(store.add_event, event),
        partial(store.event, event.id), partial(store.open_event_of, event.owner_id),
        store.open_events, partial(store.update_event, event.id, "x", Coordinates(1, 2)),
        partial(store.close_event, event.id), partial(store.add_event_media, event.id, attached),
        partial(store.remove_event_media, event.id, media.id),
        partial(store.append_chat, event.id, 0, [a_line(0)]),
        partial(store.append_chat, event.id, 0, []),
        partial(store.chat, event.id), partial(store.chat_length, event.id), store.ping,
        partial(store.claim_event, event.id, 1, "node-a"),
        partial(store.append_chat, event.id, 0, [a_line(0)], epoch=1),
        partial(store.update_event, event.id, "x", Coordinates(1, 2), epoch=1),
        partial(store.close_event, event.id, epoch=1),
        partial(store.add_event_media, event.id, attached, epoch=1),
        partial(store.remove_event_media, event.id, media.id, epoch=1),
    ]
    for call in calls:
        with trio.CancelScope() as scope:
            scope.cancel()
            await call()
        assert scope.cancelled_caught, call

    assert await store.user_by_id(user.id) is None
    assert await store.media(media.id) is None
    assert await store.event(event.id) is None
    assert await store.open_events() == []
    assert await store.chat_length(event.id) == 0


async def test_what_a_call_returns_is_not_the_stores_state(store: Store) -> None:
    event = an_event(new_id())
    await store.add_event(event)
    await store.append_chat(event.id, 0, [a_line(0)])

    (await store.open_events()).clear()
    (await store.chat(event.id)).append(a_line(1))
    assert await store.open_events() == [event]
    assert await store.chat(event.id) == [a_line(0)]


# The in-memory store only.


async def test_memory_store_refuses_calls_once_closed() -> None:
    store = MemoryStore()
    await store.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await store.ping()
    with pytest.raises(trio.ClosedResourceError):
        await store.user_by_id(new_id())
    await store.aclose()  # closing twice is fine, as with the real stores


async def test_a_test_server_can_select_the_memory_store(tmp_path: Path) -> None:
    config = Config(store=StoreLocation("memory", ""), media_path=tmp_path / "media")
    async with open_store(config) as store:
        assert isinstance(store, MemoryStore)
        await store.add_user(a_user())


# sqlite only: a file from before fencing; two processes on one file.

# The events table as vpiska created it before fencing (no `epoch` column).
OLD_EVENTS_TABLE = """
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    state INTEGER NOT NULL,
    x REAL NOT NULL,
    y REAL NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE chat_messages (
    event_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    user_image_id TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (event_id, seq)
) WITHOUT ROWID;
"""


async def test_an_sqlite_file_from_before_fencing_is_migrated_and_fenced(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    event = an_event(new_id())
    old = sqlite3.connect(path)
    with old:
        old.executescript(OLD_EVENTS_TABLE)
        old.execute(
            "INSERT INTO events (id, owner_id, name, address, state, x, y, created_at)"
            " VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
            (event.id, event.owner_id, event.name, event.address, event.coordinates.x,
             event.coordinates.y, event.created_at.isoformat()),
        )
        old.execute("INSERT INTO chat_messages VALUES (?, 0, 'u', 'n', '', 'line 0')",
                    (event.id,))
    old.close()

    store = await SqliteStore.open(path)
    try:
        assert await store.event(event.id) == event
        assert await store.chat_length(event.id) == 1
        await store.append_chat(event.id, 1, [a_line(1)], epoch=0)  # never claimed: epoch 0
        assert await store.claim_event(event.id, 1, "node-a") == event
        with pytest.raises(StaleEpoch):
            await store.update_event(event.id, "y", Coordinates(0, 0), epoch=0)
        await store.append_chat(event.id, 2, [a_line(2)], epoch=1)
    finally:
        await store.aclose()
    migrated = sqlite3.connect(path)
    assert [row[1] for row in migrated.execute("PRAGMA table_info(events)")][-2:] == [
        "epoch", "claimant"]
    assert migrated.execute("SELECT epoch, claimant FROM events").fetchall() == [(1, "node-a")]
    migrated.close()

    store = await SqliteStore.open(path)  # migrated already: opens as it is, claim kept
    try:
        with pytest.raises(StaleEpoch):
            await store.append_chat(event.id, 3, [a_line(3)], epoch=0)
        await store.close_event(event.id, epoch=1)
        assert await store.chat_length(event.id) == 3
        closed = dataclasses.replace(event, is_open=False)
        assert await store.claim_event(event.id, 1, "node-a") == closed
    finally:
        await store.aclose()


async def test_an_sqlite_file_from_before_claimants_refuses_its_claimed_epoch(
    tmp_path: Path
) -> None:
    """A file of a vpiska that fenced but kept no claimant: an event's claimed epoch is nobody's
    now, so no node may claim it again (it may be one Redis hands out twice); the next is fine."""
    path = tmp_path / "fenced.sqlite"
    event = an_event(new_id())
    old = sqlite3.connect(path)
    with old:
        old.executescript(OLD_EVENTS_TABLE)
        old.execute("ALTER TABLE events ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0")
        old.execute(
            "INSERT INTO events (id, owner_id, name, address, state, x, y, created_at, epoch)"
            " VALUES (?, ?, ?, ?, 0, ?, ?, ?, 4)",
            (event.id, event.owner_id, event.name, event.address, event.coordinates.x,
             event.coordinates.y, event.created_at.isoformat()),
        )
    old.close()

    store = await SqliteStore.open(path)
    try:
        with pytest.raises(EpochTaken) as taken:
            await store.claim_event(event.id, 4, "node-a")
        assert taken.value.holder is None
        assert "by a node of an older vpiska" in str(taken.value)
        assert await store.claim_event(event.id, 5, "node-a") == event
        assert await store.claim_event(event.id, 5, "node-a") == event
    finally:
        await store.aclose()


async def test_two_sqlite_stores_on_one_file_a_claim_fences_the_other(tmp_path: Path) -> None:
    """Two processes' views of one file: owner A claims 1, owner B claims 2, A is refused."""
    path = tmp_path / "shared.sqlite"
    node_a, node_b = await SqliteStore.open(path), await SqliteStore.open(path)
    try:
        event, attached = await claimed_event_with_a_chat(node_a, 1)
        assert await node_b.claim_event(event.id, 2, "node-b") == event
        before = await stored(node_b, event.id)
        for name, call in fenced_writes(
                node_a, event.id, 1, first_seq=2, attached=attached).items():
            with pytest.raises(StaleEpoch):
                await call()
            assert await stored(node_a, event.id) == before, name
        with pytest.raises(StaleEpoch):
            await node_a.claim_event(event.id, 1, "node-a")
        await node_b.append_chat(event.id, 2, [a_line(2)], epoch=2)
        assert await node_a.chat(event.id) == [a_line(0), a_line(1), a_line(2)]
    finally:
        await node_a.aclose()
        await node_b.aclose()


async def test_sqlite_a_write_racing_a_claim_either_lands_before_it_or_not_at_all(
    tmp_path: Path,
) -> None:
    """The old owner's batch and the new owner's claim run at once, on two connections: the
    batch is refused, or it committed before the claim and the new owner counts it."""
    path = tmp_path / "race.sqlite"
    nodes = (await SqliteStore.open(path), await SqliteStore.open(path))
    try:
        event = an_event(new_id())
        await nodes[0].add_event(event)
        await nodes[0].claim_event(event.id, 1, "node-a")
        expected: list[ChatMessage] = []
        for epoch in range(1, 31):  # the owner at `epoch` loses the event to epoch + 1
            old, new = nodes[epoch % 2], nodes[(epoch + 1) % 2]
            length = len(expected)
            batch = [ChatMessage("u", "n", "", f"epoch {epoch} line {n}") for n in range(3)]
            written: list[bool] = []
            counted: list[int] = []

            async def write(old: Store = old, batch: list[ChatMessage] = batch,
                            epoch: int = epoch, written: list[bool] = written,
                            length: int = length) -> None:
                try:
                    await old.append_chat(event.id, length, batch, epoch=epoch)
                except StaleEpoch:
                    written.append(False)
                else:
                    written.append(True)

            async def take_over(new: Store = new, epoch: int = epoch,
                                counted: list[int] = counted) -> None:
                await new.claim_event(event.id, epoch + 1, "node-b")
                counted.append(await new.chat_length(event.id))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                nursery.start_soon(take_over)
            if written == [True]:
                expected += batch
            assert counted == [len(expected)], epoch
        assert await nodes[0].chat(event.id) == expected
        assert await nodes[1].chat_length(event.id) == len(expected)
    finally:
        for node in nodes:
            await node.aclose()


# MongoDB only: the older backend's documents.


async def test_documents_have_the_older_backends_shapes(mongo: MongoServer) -> None:
    db = mongo.new_database()
    user, event = a_user(), an_event(new_id())
    event = dataclasses.replace(event, coordinates=Coordinates(1, 2))  # ints, as JSON gives them
    media = Media(id=new_id(), name="a.png", content_type="image/png", size=42, last_modified=T0)
    async with mongo.store(db) as store:
        await store.add_user(user)
        await store.add_media(media)
        await store.add_event(event)
        await store.add_event_media(event.id, EventMedia(media.id, media.content_type))
        await store.update_event(event.id, "Arbat 2", Coordinates(3, 4.5))
        await store.append_chat(event.id, 0, [a_line(0)])

        raw_user = db.users.find_one({"_id": user.id})
        assert list(raw_user) == ["_id", "name", "phone_code", "phone", "image_id", "password"]
        assert raw_user == {"_id": user.id, "name": user.name, "phone_code": "+7",
                            "phone": user.phone, "image_id": "", "password": user.password_hash}
        await store.set_user_image(user.id, media.id)
        assert db.users.find_one({"_id": user.id})["image_id"] == media.id

        raw_media = db.media.find_one({"_id": media.id})
        assert list(raw_media) == ["_id", "name", "content_type", "size", "last_modified_date"]
        assert type(raw_media["size"]) is Int64
        assert raw_media["last_modified_date"].replace(tzinfo=UTC) == T0

        raw_event = db.events.find_one({"_id": event.id})
        assert list(raw_event) == ["_id", "owner_id", "name", "address", "state", "coordinates",
                                   "created_at", "users", "media", "chat_messages"]
        assert raw_event["state"] == 0
        assert type(raw_event["state"]) is int
        assert raw_event["name"] == event.name
        assert raw_event["address"] == "Arbat 2"
        assert raw_event["coordinates"] == {"x": 3.0, "y": 4.5}
        assert all(type(v) is float for v in raw_event["coordinates"].values())
        assert raw_event["created_at"].replace(tzinfo=UTC) == T0
        assert raw_event["users"] == []
        assert raw_event["chat_messages"] == []
        assert raw_event["media"] == [{"_id": media.id, "content_type": "image/png"}]
        await store.close_event(event.id)
        assert db.events.find_one({"_id": event.id})["state"] == 1

        raw_line = db.chat_messages.find_one({"event_id": event.id}, {"_id": 0})
        assert raw_line == {"event_id": event.id, "seq": 0, "user_id": "user-0",
                            "user_name": "name-0", "user_image_id": "", "message": "line 0"}

        users_indexes = db.users.index_information()
        assert users_indexes["users_name_unique"]["unique"] is True
        assert users_indexes["users_phone_unique"]["unique"] is True
        one_open = db.events.index_information()["events_one_open_per_owner"]
        assert one_open["unique"] is True
        assert one_open["partialFilterExpression"] == {"state": 0}
        assert db.chat_messages.index_information()["chat_messages_event_seq"]["unique"] is True


async def test_reads_an_older_backends_event(mongo: MongoServer) -> None:
    db = mongo.new_database()
    event_id, owner_id, media_id = new_id(), new_id(), new_id()
    legacy = [ChatMessage(new_id(), f"old{n}", "", f"old line {n}") for n in range(3)]
    db.events.insert_one({
        "_id": event_id, "owner_id": owner_id, "name": "old party", "address": "Old street",
        "state": 0, "coordinates": {"x": 10.0, "y": 20.5},
        "created_at": datetime(2023, 1, 2, 3, 4, 5, 6000),  # what the Go driver gives: naive UTC
        "users": [{"_id": new_id()}, {"_id": new_id()}],
        "media": [{"_id": media_id, "content_type": "image/jpeg"}],
        "chat_messages": [
            {"user_id": m.user_id, "user_name": m.user_name, "user_image_id": m.user_image_id,
             "message": m.message}
            for m in legacy
        ],
    })
    expected = Event(
        id=event_id, owner_id=owner_id, name="old party", address="Old street",
        coordinates=Coordinates(10.0, 20.5), created_at=datetime(2023, 1, 2, 3, 4, 5, 6000, UTC),
        media=(EventMedia(media_id, "image/jpeg"),),
    )
    async with mongo.store(db) as store:
        assert await store.event(event_id) == expected
        assert await store.open_events() == [expected]
        assert await store.open_event_of(owner_id) == event_id
        assert await refused(store.add_event(an_event(owner_id))) == (
            ErrorCode.OWNER_ALREADY_HAS_EVENT,)

        assert await store.chat_length(event_id) == 3
        assert await store.chat(event_id) == legacy
        new = [a_line(3), a_line(4)]
        await store.append_chat(event_id, 3, new)
        assert await store.chat_length(event_id) == 5
        assert await store.chat(event_id) == legacy + new
        assert await store.chat(event_id, 2) == legacy[2:] + new
        assert await store.chat(event_id, 3) == new
        assert await store.chat(event_id, 4) == new[1:]
        assert await store.chat(event_id, 5) == []

        await store.add_event_media(event_id, EventMedia(new_id(), "video/mp4"))
        raw = db.events.find_one({"_id": event_id})
        assert len(raw["users"]) == 2  # left as they were
        assert len(raw["chat_messages"]) == 3
        assert len(raw["media"]) == 2


async def test_legacy_chat_longer_than_the_collection(mongo: MongoServer) -> None:
    db = mongo.new_database()
    event_id = new_id()
    db.events.insert_one({
        "_id": event_id, "owner_id": new_id(), "name": "n", "address": "a", "state": 1,
        "coordinates": {"x": 0.0, "y": 0.0}, "created_at": datetime(2023, 1, 1), "users": [],
        "media": [], "chat_messages": [{"user_id": "u", "user_name": "n", "user_image_id": "i",
                                        "message": str(n)} for n in range(10)],
    })
    async with mongo.store(db) as store:
        assert await store.chat_length(event_id) == 10
        assert [m.message for m in await store.chat(event_id, 8)] == ["8", "9"]
        assert await store.chat(event_id, 10) == []
        assert await store.chat(event_id, 11) == []


async def test_an_index_the_old_data_breaks_is_logged_and_skipped(
    mongo: MongoServer, caplog: pytest.LogCaptureFixture
) -> None:
    db = mongo.new_database()
    # The older backend checked before inserting, so a race could store one phone twice.
    twins = [a_user("twin1", "9001234567"), a_user("twin2", "9001234567")]
    db.users.insert_many([{"_id": u.id, "name": u.name, "phone_code": "+7", "phone": u.phone,
                           "image_id": "", "password": u.password_hash} for u in twins])
    with caplog.at_level(logging.ERROR, logger="vpiska.store.mongo"):
        async with mongo.store(db) as store:
            await store.ping()
            assert await store.user_by_id(twins[1].id) == twins[1]
            # The other indexes were created all the same.
            assert await refused(store.add_user(a_user("twin1", "9009999999"))) == (
                ErrorCode.NAME_ALREADY_USE,)
    [record] = [r for r in caplog.records if r.name == "vpiska.store.mongo"]
    # The ignores: logging's `extra=` fields, which LogRecord's type does not declare.
    assert record.index == "users_phone_unique"  # type: ignore[attr-defined]
    assert record.collection == "users"  # type: ignore[attr-defined]
    assert "dup" in record.cause.lower()  # type: ignore[attr-defined]


# MongoDB only: how fencing sits on the documents.


async def test_fencing_on_an_older_backends_event(mongo: MongoServer) -> None:
    """A document without `epoch` is at epoch 0; claiming adds only the fencing fields."""
    db = mongo.new_database()
    event_id = new_id()
    db.events.insert_one({
        "_id": event_id, "owner_id": new_id(), "name": "old", "address": "Old street",
        "state": 0, "coordinates": {"x": 1.0, "y": 2.0}, "created_at": datetime(2023, 1, 1),
        "users": [], "media": [],
        "chat_messages": [{"user_id": "u", "user_name": "n", "user_image_id": "",
                           "message": str(n)} for n in range(3)],
    })
    async with mongo.store(db) as store:
        await store.update_event(event_id, "Zero", Coordinates(0, 0), epoch=0)
        claimed = await store.claim_event(event_id, 1, "node-a")
        assert claimed is not None
        assert claimed.address == "Zero"
        assert await store.chat_length(event_id) == 3
        raw = db.events.find_one({"_id": event_id})
        assert (raw["epoch"], raw["chat_next"]) == (1, 3)
        with pytest.raises(StaleEpoch):
            await store.append_chat(event_id, 3, [a_line(3)], epoch=0)
        await store.append_chat(event_id, 3, [a_line(3), a_line(4)], epoch=1)
        assert [m.message for m in await store.chat(event_id)] == [
            "0", "1", "2", "line 3", "line 4"]
        raw = db.events.find_one({"_id": event_id})
        assert raw["chat_next"] == 5
        assert [line["seq"] for line in raw["chat_pending"]] == [3, 4]
        assert len(raw["chat_messages"]) == 3  # the older backend's lines stay where they were


async def test_an_event_claimed_before_claimants_were_kept(mongo: MongoServer) -> None:
    """A document with `epoch` but no `claimant`: its epoch is nobody's, the next is fine."""
    db = mongo.new_database()
    async with mongo.store(db) as store:
        event = an_event(new_id())
        await store.add_event(event)
        db.events.update_one({"_id": event.id}, {"$set": {"epoch": Int64(4)}})
        with pytest.raises(EpochTaken) as taken:
            await store.claim_event(event.id, 4, "node-a")
        assert (taken.value.claimed, taken.value.holder) == (4, None)
        assert await store.claim_event(event.id, 5, "node-a") == event
        raw = db.events.find_one({"_id": event.id})
        assert (raw["epoch"], raw["claimant"]) == (5, "node-a")


def commit_without_copy(db: Any, event_id: str, first_seq: int, count: int) -> list[ChatMessage]:
    """What an owner's fenced append_chat has done when it is paused (or dies) between its two
    steps: the batch is committed on the event document, not yet copied to `chat_messages`."""
    lines = [a_line(first_seq + n) for n in range(count)]
    documents = [{"event_id": event_id, "seq": first_seq + n, **dataclasses.asdict(line)}
                 for n, line in enumerate(lines)]
    db.events.update_one({"_id": event_id}, {"$set": {"chat_pending": documents,
                                                      "chat_next": first_seq + count}})
    return lines


async def test_a_batch_committed_before_the_claim_is_counted_by_the_new_owner(
    mongo: MongoServer,
) -> None:
    """The window sqlite closes with a transaction: the old owner's batch passed its check
    before the claim and its lines reach `chat_messages` after it, or never."""
    db = mongo.new_database()
    async with mongo.store(db) as node_a, mongo.store(db) as node_b:
        event, _ = await claimed_event_with_a_chat(node_a, 1)
        committed = commit_without_copy(db, event.id, 2, 3)
        # Paused: one line made it to the collection before the pause.
        db.chat_messages.insert_one({"event_id": event.id, "seq": 3,
                                     **dataclasses.asdict(committed[1])})

        assert await node_b.claim_event(event.id, 2, "node-b") == event
        assert await node_b.chat_length(event.id) == 5
        assert await node_b.chat(event.id) == [a_line(n) for n in range(5)]
        # The old owner wakes up: its next batch is refused, nothing of it lands.
        with pytest.raises(StaleEpoch):
            await node_a.append_chat(event.id, 5, [a_line(99)], epoch=1)
        await node_b.append_chat(event.id, 5, [a_line(5)], epoch=2)
        assert await node_a.chat(event.id) == [a_line(n) for n in range(6)]
        assert db.chat_messages.count_documents({"event_id": event.id}) == 6


async def test_a_batch_whose_writer_died_before_copying_it_is_copied_on_restart(
    mongo: MongoServer,
) -> None:
    """Same epoch, no new claim: the restarted actor reads chat_length, which copies it."""
    db = mongo.new_database()
    async with mongo.store(db) as store:
        event, _ = await claimed_event_with_a_chat(store, 1)
        commit_without_copy(db, event.id, 2, 2)
        assert await store.chat_length(event.id) == 4
        with pytest.raises(pymongo.errors.DuplicateKeyError):
            await store.append_chat(event.id, 2, [a_line(2)], epoch=1)
        await store.append_chat(event.id, 4, [a_line(4)], epoch=1)
        assert await store.chat(event.id) == [a_line(n) for n in range(5)]


async def test_two_mongo_stores_a_claim_fences_the_other(mongo: MongoServer) -> None:
    db = mongo.new_database()
    async with mongo.store(db) as node_a, mongo.store(db) as node_b:
        event, attached = await claimed_event_with_a_chat(node_a, 1)
        assert await node_b.claim_event(event.id, 2, "node-b") == event
        before = await stored(node_b, event.id)
        for name, call in fenced_writes(
                node_a, event.id, 1, first_seq=2, attached=attached).items():
            with pytest.raises(StaleEpoch):
                await call()
            assert await stored(node_b, event.id) == before, name
            assert db.chat_messages.count_documents({"event_id": event.id}) == 2
        with pytest.raises(StaleEpoch):
            await node_a.claim_event(event.id, 1, "node-a")


async def test_sqlite_writes_leave_checkpoints_to_the_checkpointer(tmp_path: Path) -> None:
    """No commit runs a checkpoint (wal_autocheckpoint off); `checkpoints`, beside them, copies
    the WAL into the database file: a copy of the file alone, without its WAL, has the line."""
    path = tmp_path / "vpiska.db"
    store = await SqliteStore.open(path)
    try:
        event = Event(new_id(), new_id(), "party", "a", Coordinates(1, 2), datetime.now(UTC))
        await store.add_event(event)
        await store.append_chat(event.id, 0, [ChatMessage(new_id(), "ann", "", "hello")])

        def lines_in_the_file_alone() -> int:
            alone = tmp_path / "alone.db"
            alone.write_bytes(path.read_bytes())  # the database file, without its -wal
            with sqlite3.connect(alone) as db:
                try:
                    return int(db.execute("SELECT count(*) FROM chat_messages").fetchone()[0])
                except sqlite3.OperationalError:  # no such table yet: still all in the WAL
                    return 0

        assert lines_in_the_file_alone() == 0  # the commit did not checkpoint
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(store.maintain, every=0.01))
            with trio.fail_after(15):
                while lines_in_the_file_alone() != 1:  # noqa: ASYNC110 (the file, not a task)
                    await trio.sleep(0.01)  # how often to look, not a wait for anything
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


# Lines with an identity (API.md, "Opt-in room features").


def a_sent_line(n: int, client_id: str | None = None) -> ChatMessage:
    at = datetime(2026, 12, 7, 10, 0, 0, 123000 + n * 1000, UTC)
    return dataclasses.replace(a_line(n), sent_at=at, client_id=client_id)


async def test_a_line_keeps_its_time_and_client_id(store: Store) -> None:
    event = an_event(new_id())
    await store.add_event(event)
    lines = [a_sent_line(0, "c-0"), a_sent_line(1), a_line(2)]
    await store.append_chat(event.id, 0, lines)
    [first, second, third] = await store.chat(event.id)
    assert (first.sent_at, first.client_id) == (lines[0].sent_at, "c-0")
    assert (second.sent_at, second.client_id) == (lines[1].sent_at, None)
    assert (third.sent_at, third.client_id) == (None, None)
    assert first.sent_at is not None
    assert first.sent_at.tzinfo is not None


async def test_client_ids_are_those_of_the_lines_sent_with_one(store: Store) -> None:
    event = an_event(new_id())
    await store.add_event(event)
    claimed = await store.claim_event(event.id, 1, "node-a")
    assert claimed == event
    await store.append_chat(event.id, 0, [a_sent_line(0, "x"), a_line(1)], epoch=1)
    await store.append_chat(event.id, 2, [a_sent_line(2, "x"), a_sent_line(3, "y")], epoch=1)
    assert await store.chat_client_ids(event.id) == {
        ("user-0", "x"): 0, ("user-2", "x"): 2, ("user-0", "y"): 3}
    assert await store.chat_client_ids(event.id, 2) == {("user-2", "x"): 2, ("user-0", "y"): 3}
    assert await store.chat_client_ids(event.id, 4) == {}
    assert await store.chat_client_ids(new_id()) == {}


async def test_chat_slice_is_a_page_of_lines(store: Store) -> None:
    event = an_event(new_id())
    await store.add_event(event)
    lines = [a_line(n) for n in range(10)]
    await store.append_chat(event.id, 0, lines)
    assert await store.chat_slice(event.id, 3, 6) == lines[3:6]
    assert await store.chat_slice(event.id, 0, 1) == lines[:1]
    assert await store.chat_slice(event.id, 8, 50) == lines[8:]
    assert await store.chat_slice(event.id, 6, 6) == []
    assert await store.chat_slice(event.id, 20, 30) == []
    assert await store.chat_slice(new_id(), 0, 5) == []


async def test_erasing_a_line_keeps_its_place_and_is_fenced(store: Store) -> None:
    event = an_event(new_id())
    await store.add_event(event)
    await store.claim_event(event.id, 1, "node-a")
    await store.append_chat(event.id, 0, [a_line(0), a_sent_line(1, "c"), a_line(2)], epoch=1)
    assert await store.erase_chat(event.id, 1, epoch=1) is True
    assert [line.message for line in await store.chat(event.id)] == ["line 0", "", "line 2"]
    erased = (await store.chat(event.id))[1]
    assert (erased.user_id, erased.client_id) == ("user-1", "c")  # only the text goes
    assert await store.erase_chat(event.id, 1, epoch=1) is True  # again: no harm
    assert await store.erase_chat(event.id, 3, epoch=1) is False
    await store.claim_event(event.id, 2, "node-b")
    with pytest.raises(StaleEpoch):
        await store.erase_chat(event.id, 0, epoch=1)
    assert [line.message for line in await store.chat(event.id)] == ["line 0", "", "line 2"]
    assert await store.erase_chat(event.id, 0) is True  # unfenced: one node
    assert await store.chat_length(event.id) == 3


async def test_an_sqlite_file_from_before_line_times_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    event = an_event(new_id())
    old = sqlite3.connect(path)
    with old:
        old.executescript(OLD_EVENTS_TABLE)
        old.execute(
            "INSERT INTO events (id, owner_id, name, address, state, x, y, created_at)"
            " VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
            (event.id, event.owner_id, event.name, event.address, event.coordinates.x,
             event.coordinates.y, event.created_at.isoformat()),
        )
        old.execute("INSERT INTO chat_messages VALUES (?, 0, 'u', 'n', '', 'line 0')",
                    (event.id,))
    old.close()
    store = await SqliteStore.open(path)
    try:
        [line] = await store.chat(event.id)
        assert (line.message, line.sent_at, line.client_id) == ("line 0", None, None)
        await store.append_chat(event.id, 1, [a_sent_line(1, "c")])
        assert await store.chat_client_ids(event.id) == {("user-1", "c"): 1}
        assert await store.erase_chat(event.id, 0) is True
        assert [line.message for line in await store.chat_slice(event.id, 0, 2)] == [
            "", "line 1"]
    finally:
        await store.aclose()


async def test_an_older_backends_lines_have_no_time_and_can_be_erased(
        mongo: MongoServer) -> None:
    db = mongo.new_database()
    event_id = new_id()
    db.events.insert_one({
        "_id": event_id, "owner_id": new_id(), "name": "n", "address": "a", "state": 0,
        "coordinates": {"x": 0.0, "y": 0.0}, "created_at": datetime(2023, 1, 1), "users": [],
        "media": [], "chat_messages": [{"user_id": "u", "user_name": "n", "user_image_id": "i",
                                        "message": str(n)} for n in range(3)],
    })
    async with mongo.store(db) as store:
        await store.append_chat(event_id, 3, [a_sent_line(3, "c")])
        lines = await store.chat(event_id)
        assert [line.sent_at for line in lines[:3]] == [None] * 3
        assert lines[3].sent_at == a_sent_line(3).sent_at
        assert [line.message for line in await store.chat_slice(event_id, 1, 4)] == [
            "1", "2", "line 3"]
        assert await store.chat_client_ids(event_id) == {("user-0", "c"): 3}
        assert await store.erase_chat(event_id, 1) is True  # in the event document
        assert await store.erase_chat(event_id, 3) is True  # in the collection
        assert [line.message for line in await store.chat(event_id)] == ["0", "", "2", ""]
        assert await store.erase_chat(event_id, 4) is False
        assert await store.erase_chat(event_id, -1) is False
        raw = db.events.find_one({"_id": event_id})
        assert list(raw["chat_messages"][1]) == ["user_id", "user_name", "user_image_id",
                                                 "message"]


# The host in charge and leaving for good (API.md, "Opt-in room features").


async def test_a_ban_is_kept_with_the_event(store: Store) -> None:
    event = an_event(new_id())
    await store.add_event(event)
    assert (await store.event(event.id)) == event
    banned = new_id()
    await store.ban_member(event.id, banned)
    await store.ban_member(event.id, banned)  # again: a no-op
    found = await store.event(event.id)
    assert found is not None
    assert found.banned == {banned}
    assert (await store.open_events())[0].banned == {banned}
    await store.ban_member(new_id(), banned)  # an unknown event: nothing to keep it with


async def test_a_ban_is_fenced_like_the_other_writes(store: Store) -> None:
    event = an_event(new_id())
    await store.add_event(event)
    await store.claim_event(event.id, 2, "node-b")
    with pytest.raises(StaleEpoch):
        await store.ban_member(event.id, new_id(), epoch=1)
    await store.ban_member(event.id, "x" * 36, epoch=2)
    found = await store.event(event.id)
    assert found is not None
    assert found.banned == {"x" * 36}


async def test_a_deleted_user_frees_their_name_and_phone(store: Store) -> None:
    user = dataclasses.replace(a_user(), image_id=new_id())
    await store.add_user(user)
    assert await store.delete_user(user.id) == user
    assert await store.delete_user(user.id) is None
    assert await store.user_by_id(user.id) is None
    assert await store.user_by_phone(user.phone) is None
    assert user.id not in await store.user_ids(10)
    await store.add_user(a_user(user.name, user.phone))  # free at once


async def test_anonymising_empties_one_users_name_and_image_in_every_event(store: Store
                                                                            ) -> None:
    leaving, staying = new_id(), new_id()
    first, second, other = an_event(new_id()), an_event(new_id()), an_event(new_id())
    for event in (first, second, other):
        await store.add_event(event)

    def line(user_id: str, text: str) -> ChatMessage:
        return ChatMessage(user_id, "name-" + user_id[:4], "image", text)

    await store.append_chat(first.id, 0, [line(leaving, "a"), line(staying, "b")])
    await store.append_chat(second.id, 0, [line(leaving, "c")])
    await store.append_chat(other.id, 0, [line(staying, "d")])
    assert sorted(await store.anonymise_chat(leaving)) == sorted([first.id, second.id])
    assert await store.chat(first.id) == [ChatMessage(leaving, "", "", "a"),
                                          line(staying, "b")]
    assert await store.chat(second.id) == [ChatMessage(leaving, "", "", "c")]
    assert await store.chat(other.id) == [line(staying, "d")]
    assert await store.anonymise_chat(new_id()) == []


async def test_anonymising_reaches_an_older_backends_embedded_chat(mongo: MongoServer) -> None:
    db = mongo.new_database()
    event_id, leaving = new_id(), new_id()
    legacy = [ChatMessage(leaving, "old", "img", "old line"),
              ChatMessage(new_id(), "other", "", "kept")]
    db.events.insert_one({
        "_id": event_id, "owner_id": new_id(), "name": "old party", "address": "Old street",
        "state": 0, "coordinates": {"x": 10.0, "y": 20.5}, "created_at": datetime(2023, 1, 2),
        "users": [], "media": [],
        "chat_messages": [
            {"user_id": m.user_id, "user_name": m.user_name, "user_image_id": m.user_image_id,
             "message": m.message}
            for m in legacy
        ],
    })
    async with mongo.store(db) as store:
        await store.append_chat(event_id, 2, [ChatMessage(leaving, "old", "img", "new line")])
        assert await store.anonymise_chat(leaving) == [event_id]
        assert await store.chat(event_id) == [ChatMessage(leaving, "", "", "old line"),
                                              legacy[1],
                                              ChatMessage(leaving, "", "", "new line")]


async def test_an_sqlite_file_from_main_gets_bans(tmp_path: Path) -> None:
    """A file written before bans (no event_bans table) opens, and its events take bans."""
    path = tmp_path / "old.sqlite"
    old = await SqliteStore.open(path)
    event = an_event(new_id())
    await old.add_event(event)
    await old.aclose()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE event_bans")
    db.commit()
    db.close()
    store = await SqliteStore.open(path)
    try:
        assert await store.event(event.id) == event
        await store.ban_member(event.id, "someone")
        found = await store.event(event.id)
        assert found is not None
        assert found.banned == {"someone"}
    finally:
        await store.aclose()


async def test_sqlite_a_ping_is_answered_while_a_write_waits_for_the_files_lock(
        tmp_path: Path) -> None:
    """Another process holds the write lock: the store's write waits for it, the ping does
    not wait behind the write (a backlog is not a lost store; vpiska/store/health.py)."""
    path = tmp_path / "shared.sqlite"
    store = await SqliteStore.open(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        async with trio.open_nursery() as nursery:
            written = trio.Event()

            async def write() -> None:
                await store.add_user(a_user())
                written.set()

            nursery.start_soon(write)
            await trio.testing.wait_all_tasks_blocked()  # the write is in its thread, waiting
            with trio.fail_after(2):
                await store.ping()
            assert not written.is_set()
            other.execute("ROLLBACK")
            with trio.fail_after(10):
                await written.wait()
    finally:
        other.close()
        await store.aclose()


async def test_mongodb_a_ping_is_answered_while_every_call_thread_is_busy(
        mongodb_url: str) -> None:
    """Every one of the store's call threads is taken: the ping still answers at once."""
    name = new_database_name()
    store = await MongoStore.open(mongodb_url, name)
    release = threading.Event()
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(THREADS + 1):
                nursery.start_soon(store._run, partial(release.wait, 30))
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(10):
                await store.ping()
            assert not release.is_set()
            release.set()
    finally:
        release.set()
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongodb_url)
        client.drop_database(name)
        client.close()
        await store.aclose()
