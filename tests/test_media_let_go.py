"""What a photo taken down or an avatar replaced leaves behind: nothing anyone can download.

`events/media/remove` and a new avatar (`users/media/set`) delete the record and the bytes of
the media they let go of, as the older backend did (API.md): a later download is 404, metadata
too. Over real sockets on both homes of media bytes (sqlite with files, MongoDB with GridFS),
and in a cluster whichever node takes the request.

The reference goes first, the media after (vpiska/media.py), so a failure in between leaves a
whole media that nothing refers to, still served, never an event or a user pointing at bytes
that are gone; the tests cut the sequence at each step. The server's part of the files home is
exercised with a store that fails on purpose (FaultyStore cannot stand in front of GridFS, which
needs the MongoDB store itself), and MediaLibrary alone on both homes.
"""

from __future__ import annotations

import io
from collections.abc import AsyncGenerator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import trio
import trio.testing

from tests.helpers.clients import Crowd, host_event, token_for
from tests.helpers.cluster_fixtures import RedisServer, StartCluster
from tests.helpers.cluster_state import TTL, eventually, owner_now
from tests.helpers.fakes import FaultyStore
from tests.helpers.media import a_home_of_bytes, bytes_of, stored_ids
from tests.helpers.mongodb_fixtures import MongoDatabase
from tests.helpers.server import CLIENT_LIMITS, Server
from vpiska.auth import Tokens
from vpiska.config import StoreLocation
from vpiska.domain import User, new_id
from vpiska.errors import DomainError, ErrorCode
from vpiska.media import MediaLibrary, Upload
from vpiska.store import MediaBytes, StoredBytes
from vpiska.store.memory import MemoryStore

ADD = "/api/v1/events/media/add"
REMOVE = "/api/v1/events/media/remove"
SET_IMAGE = "/api/v1/users/media/set"
PHOTO = b"\x89PNG\r\n\x1a\n a photo"


@pytest.fixture(params=["files", "gridfs"])
def media_store(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The settings of one home of media bytes: sqlite with files, MongoDB with GridFS."""
    if request.param == "files":
        return {}
    database: MongoDatabase = request.getfixturevalue("mongodb_database")
    return {"store": StoreLocation("mongodb", database.url), "db_name": database.name,
            "media_store": "gridfs"}


@pytest.fixture
def config_overrides(media_store: dict[str, Any]) -> dict[str, Any]:
    return media_store


FILES_ONLY = pytest.mark.parametrize("media_store", ["files"], indirect=True)
FAULTY = pytest.mark.parametrize("wrap_store", [FaultyStore])


async def download(server: Server, media_id: str) -> tuple[int, bytes]:
    response = await server.http.get(f"/api/v1/media/{media_id}")
    return response.status_code, response.content


async def metadata_codes(server: Server, media_id: str) -> list[str]:
    envelope = (await server.http.get(f"/api/v1/media/metadata/{media_id}")).json()
    return [error["errorCode"] for error in envelope["errors"] or []]


async def stored(server: Server) -> set[str]:
    """Every media id with a record or any of its bytes left."""
    records = await server.store.media_ids("", 1000)
    return {*records, *stored_ids(bytes_of(server))}


async def add_photo(server: Server, token: str, event_id: str) -> str:
    await server.ok(ADD, token=token, data={"eventId": event_id},
                    files={"media": ("p.png", PHOTO, "image/png")})
    event = await server.ok("/api/v1/events/get", {"eventId": event_id})
    media_id: str = event["media"][-1]["id"]
    return media_id


async def set_image(server: Server, token: str, data: bytes = PHOTO) -> dict[str, Any]:
    result: dict[str, Any] = await server.ok(SET_IMAGE, token=token,
                                             files={"image": ("me.png", data, "image/png")})
    return result


def faulty(server: Server) -> FaultyStore:
    assert isinstance(server.store, FaultyStore)
    return server.store


# events/media/remove.


async def test_a_removed_photo_is_deleted_record_and_bytes(server: Server, crowd: Crowd) -> None:
    token, event_id = await host_event(server)
    member = await crowd.join((await token_for(server, "bob"))[1], event_id)
    photo = await add_photo(server, token, event_id)
    await member.wait_for(
        lambda m: f'mediaAdded/{{"id":"{photo}","contentType":"image/png"}}' in m.frames)
    assert await download(server, photo) == (200, PHOTO)

    await server.ok(REMOVE, {"eventId": event_id, "mediaId": photo}, token=token)
    await member.wait_for(lambda m: f"mediaRemoved/{photo}" in m.frames)
    assert await download(server, photo) == (404, b"")
    assert await metadata_codes(server, photo) == ["MediaNotFound"]
    assert await stored(server) == set()
    assert (await server.ok("/api/v1/events/get", {"eventId": event_id}))["media"] == []
    assert await server.codes(REMOVE, {"eventId": event_id, "mediaId": photo}, token=token) == [
        "MediaNotFound"]


async def test_a_refused_remove_deletes_nothing(server: Server) -> None:
    token, event_id = await host_event(server)
    photo = await add_photo(server, token, event_id)
    _, stranger = await token_for(server)
    assert await server.codes(REMOVE, {"eventId": event_id, "mediaId": photo},
                              token=stranger) == ["UserIsNotOwner"]
    loose = await server.ok("/api/v1/media", files={"file": ("l.png", PHOTO, "image/png")})
    assert await server.codes(REMOVE, {"eventId": event_id, "mediaId": loose},
                              token=token) == ["MediaNotFound"]
    assert await stored(server) == {photo, loose}
    assert await download(server, photo) == await download(server, loose) == (200, PHOTO)


@FILES_ONLY
@FAULTY
async def test_the_room_detaches_the_photo_before_its_record_goes(server: Server) -> None:
    token, event_id = await host_event(server)
    photo = await add_photo(server, token, event_id)
    await server.ok(REMOVE, {"eventId": event_id, "mediaId": photo}, token=token)
    calls = [name for name, _ in faulty(server).calls
             if name in ("remove_event_media", "delete_media")]
    assert calls == ["remove_event_media", "delete_media"]


@FILES_ONLY
@FAULTY
async def test_a_failure_between_detach_and_delete_leaves_the_photo_whole(
    server: Server, crowd: Crowd, log_lines: list[dict[str, Any]]
) -> None:
    """The store fails as the record is deleted (as a crash right after the detach would stop
    everything there): the photo is off the event, announced so, and still whole; nothing
    refers to it, so an ordinary DELETE takes it away."""
    token, event_id = await host_event(server)
    member = await crowd.join((await token_for(server, "bob"))[1], event_id)
    photo = await add_photo(server, token, event_id)
    faulty(server).fail("delete_media")

    assert await server.codes(REMOVE, {"eventId": event_id, "mediaId": photo}, token=token) == [
        "InternalError"]
    await member.wait_for(lambda m: f"mediaRemoved/{photo}" in m.frames)
    assert (await server.ok("/api/v1/events/get", {"eventId": event_id}))["media"] == []
    assert await download(server, photo) == (200, PHOTO)
    assert await metadata_codes(server, photo) == []
    errors = [line for line in log_lines if line["level"] == "error"]
    assert len(errors) == 1, errors

    faulty(server).heal("delete_media")
    assert (await server.http.delete(f"/api/v1/media/{photo}")).json()["isSuccess"] is True
    assert await download(server, photo) == (404, b"")
    assert await stored(server) == set()


@FILES_ONLY
@FAULTY
async def test_a_client_hanging_up_mid_remove_still_deletes_the_photo(server: Server) -> None:
    """The room may detach the photo whether or not its client waits for the answer; once it
    has, the record and bytes go too."""
    token, event_id = await host_event(server)
    photo = await add_photo(server, token, event_id)
    store = faulty(server)
    detach = store.hang("remove_event_media")
    async with trio.open_nursery() as nursery:
        async def hang_up_client() -> None:
            async with httpx.AsyncClient(base_url=server.url, limits=CLIENT_LIMITS) as client:
                await client.post(REMOVE, json={"eventId": event_id, "mediaId": photo},
                                  headers={"Authorization": f"Bearer {token}"})

        nursery.start_soon(hang_up_client)
        await store.wait_calls("remove_event_media", 1)
        nursery.cancel_scope.cancel()  # the client goes, its connection closed
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # the server has seen it go
    detach.set()

    async def gone() -> bool:  # asked of the store first: a download racing the delete is cut
        return await stored(server) == set() and await download(server, photo) == (404, b"")

    await eventually(gone, 15)
    assert (await server.ok("/api/v1/events/get", {"eventId": event_id}))["media"] == []


# A new avatar.


async def test_a_replaced_avatar_is_deleted_record_and_bytes(server: Server) -> None:
    user = await server.sign_up()
    first = await set_image(server, user["accessToken"])
    assert await download(server, first["imageId"]) == (200, PHOTO)
    second = await set_image(server, first["accessToken"], PHOTO + b"2")

    assert await download(server, first["imageId"]) == (404, b"")
    assert await metadata_codes(server, first["imageId"]) == ["MediaNotFound"]
    assert await download(server, second["imageId"]) == (200, PHOTO + b"2")
    assert await stored(server) == {second["imageId"]}
    identity = Tokens(server.config).read(second["accessToken"])
    assert identity is not None
    assert identity.image_id == second["imageId"]
    login = await server.ok("/api/v1/users/login", {"phone": user["phone"], "password": "secret1"})
    assert login["imageId"] == second["imageId"]


async def test_concurrent_avatars_of_one_user_leave_only_the_one_set(server: Server) -> None:
    """Each set replaces a different image and deletes it: no orphan, and the image the user
    ends up with is never the one deleted."""
    user_id, token = await token_for(server)
    initial = (await set_image(server, token))["imageId"]
    answers: list[str] = []

    async def set_one(n: int) -> None:
        answers.append((await set_image(server, token, PHOTO + bytes([n])))["imageId"])

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(set_one, n)
    user = await server.store.user_by_id(user_id)
    assert user is not None
    assert user.image_id in answers
    assert await stored(server) == {user.image_id}
    assert (await download(server, user.image_id))[0] == 200
    for gone in {initial, *answers} - {user.image_id}:
        assert await download(server, gone) == (404, b"")


@FILES_ONLY
@FAULTY
async def test_a_client_hanging_up_mid_avatar_leaves_no_image_behind(server: Server) -> None:
    user_id, token = await token_for(server)
    initial = (await set_image(server, token))["imageId"]
    store = faulty(server)
    swap = store.hang("set_user_image")
    async with trio.open_nursery() as nursery:
        async def hang_up_client() -> None:
            async with httpx.AsyncClient(base_url=server.url, limits=CLIENT_LIMITS) as client:
                await client.post(SET_IMAGE, headers={"Authorization": f"Bearer {token}"},
                                  files={"image": ("me.png", PHOTO, "image/png")})

        nursery.start_soon(hang_up_client)
        await store.wait_calls("set_user_image", 2)
        nursery.cancel_scope.cancel()
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    swap.set()

    async def settled() -> bool:
        user = await store.user_by_id(user_id)
        assert user is not None
        return user.image_id != initial and await stored(server) == {user.image_id}

    await eventually(settled, 15)


async def test_a_first_avatar_deletes_nothing(server: Server) -> None:
    _, token = await token_for(server)
    loose = await server.ok("/api/v1/media", files={"file": ("l.png", PHOTO, "image/png")})
    image = (await set_image(server, token))["imageId"]
    assert await stored(server) == {loose, image}


# MediaLibrary.discard on its own, on both homes.


class BytesThatStay:
    """A home of media bytes whose first removal fails, as a lost disk or database would."""

    def __init__(self, inner: MediaBytes) -> None:
        self._inner = inner
        self.failures = 1

    @property
    def spool_dir(self) -> Path | None:
        return self._inner.spool_dir

    async def save(self, media_id: str, source: IO[bytes]) -> int:
        return await self._inner.save(media_id, source)

    async def open(self, media_id: str) -> StoredBytes | None:
        return await self._inner.open(media_id)

    async def exists(self, media_id: str) -> bool:
        return await self._inner.exists(media_id)

    async def remove(self, media_id: str) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("injected failure of remove")
        await self._inner.remove(media_id)

    def stored_before(self, moment: datetime) -> AsyncGenerator[list[str], None]:
        return self._inner.stored_before(moment)

    async def remove_dead_saves(self, moment: datetime) -> int:
        return await self._inner.remove_dead_saves(moment)


@pytest.mark.parametrize("kind", ["files", "gridfs"])
async def test_bytes_that_fail_to_go_leave_no_record_to_serve_broken(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Record first, bytes second: bytes left by a failure are an orphan no endpoint serves,
    and the next discard of that id takes them."""
    async with a_home_of_bytes(kind, tmp_path, request) as home:
        flaky = BytesThatStay(home)
        library = MediaLibrary(MemoryStore(), flaky)
        media = await library.add(Upload("a.png", "image/png", io.BytesIO(PHOTO)))
        with pytest.raises(OSError, match="injected"):
            await library.discard(media.id)
        with pytest.raises(DomainError) as missing:
            await library.open(media.id)
        assert missing.value.codes == (ErrorCode.MEDIA_NOT_FOUND,)
        assert await home.exists(media.id)
        await library.discard(media.id)
        assert stored_ids(home) == []


@pytest.mark.parametrize("kind", ["files", "gridfs"])
async def test_media_still_in_use_elsewhere_is_kept(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The older backend's data may share one media between an event and a user: letting go
    of it in one place keeps it for the other."""
    async with a_home_of_bytes(kind, tmp_path, request) as home:
        store = FaultyStore(MemoryStore())
        library = MediaLibrary(store, home)
        media = await library.add(Upload("a.png", "image/png", io.BytesIO(PHOTO)))
        user = User(new_id(), "ann", "9001234567", "")
        await store.add_user(user)
        await store.set_user_image(user.id, media.id)
        await library.discard(media.id)
        found, _ = await library.open(media.id)
        assert found == media


# In a cluster: the request taken by a node that does not own the room.


async def test_nodes_on_one_machine_delete_for_each_other(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """sqlite and media files, shared by the nodes' one data dir."""
    await removed_and_replaced_through_the_node_not_owning_the_room(
        cluster, redis_server, nursery)


async def test_machines_delete_for_each_other(
    machines: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """MongoDB and GridFS, all the machines share."""
    await removed_and_replaced_through_the_node_not_owning_the_room(
        machines, redis_server, nursery)


async def removed_and_replaced_through_the_node_not_owning_the_room(
    start: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """The remove taken by the node that does not own the room: the owner detaches it, the
    node that took the request deletes it, and no node serves it any more; an avatar replaced
    through one node is gone from the other."""
    group = await start(2, redis=redis_server, LEASE_TTL_SECONDS=str(TTL))
    servers = [await group.server(node) for node in group.nodes]
    token, event_id = await host_event(servers[0])
    photo = await add_photo(servers[0], token, event_id)
    owner = await owner_now(redis_server, event_id, group)
    on_owner = servers[group.nodes.index(owner)]
    elsewhere = servers[1 - group.nodes.index(owner)]
    crowd = Crowd(nursery, on_owner)
    member = await crowd.join((await token_for(on_owner, "bob"))[1], event_id)
    for server in servers:
        assert await download(server, photo) == (200, PHOTO)

    await elsewhere.ok(REMOVE, {"eventId": event_id, "mediaId": photo}, token=token)
    await member.wait_for(lambda m: f"mediaRemoved/{photo}" in m.frames)
    for server in servers:
        assert await download(server, photo) == (404, b"")
        assert await metadata_codes(server, photo) == ["MediaNotFound"]

    first = await set_image(elsewhere, token)
    await set_image(on_owner, first["accessToken"], PHOTO + b"2")
    for server in servers:
        assert await download(server, first["imageId"]) == (404, b"")
    await crowd.aclose()
