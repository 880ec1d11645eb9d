"""The media sweep (vpiska/media_sweep.py): what a crash between a media's two writes leaves,
bytes without a record and the pieces of a save that died, is removed once old; a record and
its bytes are never touched. Each home of bytes beside its real store: files beside an sqlite
file, GridFS beside the MongoDB wire server.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import cast

import httpx
import pytest
import trio
import trio.lowlevel
from bson.objectid import ObjectId

from tests.helpers.cluster_state import eventually
from tests.helpers.fakes import FaultyStore
from tests.helpers.media import stored_ids
from tests.helpers.mongodb_fixtures import MongoDatabase
from tests.helpers.process import JWT_KEY, vpiska_process
from vpiska.domain import is_id, new_id, utc_now
from vpiska.media import MediaLibrary, Upload
from vpiska.media_sweep import ORPHAN_GRACE, serve_media_sweep, sweep_orphans
from vpiska.store import MediaBytes, MediaFiles, Store
from vpiska.store.gridfs import CHUNK_BYTES, GridFSMedia
from vpiska.store.memory import MemoryStore
from vpiska.store.mongo import MongoStore
from vpiska.store.sqlite import SqliteStore

PHOTO = b"\x89PNG" + os.urandom(3 * CHUNK_BYTES)  # several GridFS chunks
WAIT_SECONDS = 60


@asynccontextmanager
async def store_and_bytes(kind: str, tmp_path: Path, request: pytest.FixtureRequest
                          ) -> AsyncIterator[tuple[Store, MediaBytes]]:
    """A real store and the home of bytes that goes with it."""
    if kind == "files":
        sqlite_store = await SqliteStore.open(tmp_path / "vpiska.sqlite")
        try:
            yield sqlite_store, MediaFiles(tmp_path / "media")
        finally:
            await sqlite_store.aclose()
        return
    database: MongoDatabase = request.getfixturevalue("mongodb_database")
    mongo_store = await MongoStore.open(database.url, database.name)
    try:
        yield mongo_store, GridFSMedia(mongo_store.database)
    finally:
        await mongo_store.aclose()


def leave_a_dead_save(home: MediaBytes, media_id: str) -> None:
    """What a save killed halfway leaves: files, its temporary file; GridFS, its first chunks
    without their fs.files document."""
    if isinstance(home, MediaFiles):
        (home.root / f".{media_id}.partial").write_bytes(PHOTO[:CHUNK_BYTES])
        return
    assert isinstance(home, GridFSMedia)
    home.database["fs.chunks"].insert_many([
        {"_id": ObjectId(), "files_id": media_id, "n": n, "data": PHOTO[:CHUNK_BYTES]}
        for n in range(2)])


KINDS = pytest.mark.parametrize("kind", ["files", "gridfs"])


@KINDS
async def test_bytes_without_a_record_and_dead_saves_go_once_old_and_media_stays(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    async with store_and_bytes(kind, tmp_path, request) as (store, home):
        library = MediaLibrary(store, home)
        kept = await library.add(Upload("a.png", "image/png", io.BytesIO(PHOTO)))
        orphan, dead = new_id(), new_id()
        await home.save(orphan, io.BytesIO(PHOTO))  # a kill before the upload's record
        leave_a_dead_save(home, dead)
        before = sorted(stored_ids(home))

        young = await sweep_orphans(store, home, stored_before=utc_now() - ORPHAN_GRACE)
        assert (young.without_record, young.dead_saves) == (0, 0)
        assert sorted(stored_ids(home)) == before  # may be uploads under way: kept

        later = utc_now() + timedelta(seconds=1)  # as the sweep a day later sees them
        swept = await sweep_orphans(store, home, stored_before=later)
        assert (swept.without_record, swept.dead_saves) == (1, 1)
        assert stored_ids(home) == [kept.id]
        _, stored = await library.open(kept.id)
        assert b"".join([chunk async for chunk in stored.chunks()]) == PHOTO

        again = await sweep_orphans(store, home, stored_before=later)
        assert (again.without_record, again.dead_saves) == (0, 0)


@KINDS
async def test_many_orphans_are_swept_a_batch_at_a_time(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    async with store_and_bytes(kind, tmp_path, request) as (store, home):
        library = MediaLibrary(store, home)
        kept = [(await library.add(Upload("a", "image/png", io.BytesIO(b"k")))).id
                for _ in range(3)]
        for _ in range(1200):  # over two batches
            await home.save(new_id(), io.BytesIO(b"o"))
        swept = await sweep_orphans(store, home,
                                    stored_before=utc_now() + timedelta(seconds=1))
        assert swept.without_record == 1200
        assert sorted(stored_ids(home)) == sorted(kept)


@KINDS
async def test_bytes_beside_a_database_without_any_media_record_are_left_with_a_warning(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong DB_NAME or DATA_DIR beside the real media must not empty the media store."""
    async with store_and_bytes(kind, tmp_path, request) as (store, home):
        media_id = new_id()
        await home.save(media_id, io.BytesIO(PHOTO))
        with caplog.at_level(logging.WARNING, "vpiska.media_sweep"):
            swept = await sweep_orphans(store, home,
                                        stored_before=utc_now() + timedelta(seconds=1))
        assert swept.without_record == 0
        assert stored_ids(home) == [media_id]
        assert [record.message for record in caplog.records] == [
            "media sweep skipped: the media store holds bytes but the database no media "
            "record at all (a wrong DB_NAME or DATA_DIR?)"]


async def test_a_failed_sweep_is_logged_once_and_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    home = MediaFiles(tmp_path / "media")
    await MediaLibrary(memory, home).add(Upload("a", "image/png", io.BytesIO(b"kept")))
    orphan = new_id()
    await home.save(orphan, io.BytesIO(b"orphan"))
    store.fail("media_found", lambda *args: store.count("media_found") == 1)
    removed = trio.Event()
    watcher = logging.Handler(logging.INFO)
    watcher.emit = (  # type: ignore[method-assign]
        lambda record: removed.set() if record.levelno == logging.INFO else None)
    sweep_log = logging.getLogger("vpiska.media_sweep")
    sweep_log.addHandler(watcher)
    try:
        with caplog.at_level(logging.INFO, "vpiska.media_sweep"):
            async with trio.open_nursery() as sweeping:
                sweeping.start_soon(partial(serve_media_sweep, cast(Store, store), home,
                                            grace=timedelta(seconds=-1), interval=0.01))
                with trio.fail_after(WAIT_SECONDS):
                    await removed.wait()
                sweeping.cancel_scope.cancel()
    finally:
        sweep_log.removeHandler(watcher)
    assert [record.message for record in caplog.records] == [
        "media sweep failed: tried again later", "media sweep removed bytes no record names"]
    assert await home.open(orphan) is None


async def test_a_kill_between_an_uploads_bytes_and_its_record_leaves_bytes_swept_at_start(
    tmp_path: Path, nursery: trio.Nursery,
) -> None:
    """The real thing: the server SIGKILLed while its upload's record waits for the sqlite
    file's write lock (held here), its bytes durable already. The bytes stay, without a record
    to serve them; the next start's sweep removes them once old."""
    media = tmp_path / "data" / "media"
    async with vpiska_process(tmp_path, JWT_KEY=JWT_KEY) as served:
        async with httpx.AsyncClient(base_url=served.url) as http:
            kept = (await http.post("/api/v1/media", files={
                "file": ("kept.png", PHOTO, "image/png")})).json()["result"]
        lock = sqlite3.connect(tmp_path / "data" / "vpiska.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the next record waits (up to the busy timeout)

        async def upload() -> None:
            with contextlib.suppress(httpx.TransportError):
                async with httpx.AsyncClient(base_url=served.url) as http:
                    await http.post("/api/v1/media", files={
                        "file": ("cut.png", PHOTO, "image/png")})

        nursery.start_soon(upload)

        async def bytes_stored() -> bool:  # by another process: nothing to wait on but looking
            await trio.lowlevel.checkpoint()
            return len(media_files(media)) == 2

        # Well within the busy timeout (5 s) the record waits for before failing.
        await eventually(bytes_stored, 4)
        served.process.send_signal(signal.SIGKILL)
        await served.process.wait()
        lock.rollback()
        lock.close()
    [orphan] = set(media_files(media)) - {kept}
    store = await SqliteStore.open(tmp_path / "data" / "vpiska.db")
    try:
        assert await store.media_found([kept, orphan]) == {kept}  # bytes, never a record alone
    finally:
        await store.aclose()
    a_day_ago = time.time() - ORPHAN_GRACE.total_seconds() - 60
    os.utime(media / orphan, (a_day_ago, a_day_ago))

    async with vpiska_process(tmp_path, JWT_KEY=JWT_KEY) as restarted:
        with trio.fail_after(WAIT_SECONDS):
            await restarted.wait_for_output(
                lambda process: b"media sweep removed bytes no record names" in process.output)
    assert media_files(media) == [kept]
    [line] = [json.loads(line) for line in restarted.text().splitlines()
              if "media sweep" in line]
    assert (line["without_record"], line["dead_saves"]) == (1, 0)


def media_files(folder: Path) -> list[str]:
    return [path.name for path in folder.iterdir() if is_id(path.name)]
