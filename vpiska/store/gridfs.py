"""Media bytes in MongoDB's GridFS (MEDIA_STORE=gridfs), so every node sharing the database
serves every media whatever machine it runs on.

The layout is GridFS's own, bucket `fs`: one `fs.files` document per media whose `_id` is the
media id (a string), its bytes in `fs.chunks` documents of CHUNK_BYTES each. So the bytes are
found by id with one indexed lookup, and any GridFS tool (`mongofiles`, pymongo's
`gridfs.GridFSBucket`) reads them.

Why not write and read through `GridFSBucket`: pymongo's GridIn buffers chunks up to a whole
message (48 MB) before inserting them, and a GridOut's cursor fetches up to 16 MB a batch, so
twenty 20 MiB transfers at once would hold hundreds of MiB. Here a save inserts BATCH_CHUNKS
chunks at a time and a read fetches FETCH_CHUNKS, one worker thread call each.

Crash safety is GridFS's own order: every chunk first, the `fs.files` document last. `open` and
`exists` look only at `fs.files`, so a save that died halfway (a crash, a kill) is invisible:
its chunks are orphans, which the next save of the same id deletes before it writes (media
ids are fresh uuids, so only `media import` ever saves an id again: the resumed copy). The
media sweep removes the others once old (`remove_dead_saves`): a chunk's age is its ObjectId's.

pymongo blocks, so every call runs in a worker thread under this module's own limiter.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from functools import partial
from typing import IO, Any, TypeVar

import trio
from bson.int64 import Int64
from bson.objectid import ObjectId
from gridfs import GridFSBucket
from gridfs.errors import NoFile
from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database

from vpiska.domain import is_id
from vpiska.store.media_bytes import SWEEP_BATCH, BytesLost

_T = TypeVar("_T")
Document = dict[str, Any]

BUCKET = "fs"
CHUNK_BYTES = 255 * 1024  # GridFS's default chunk size
# Chunks one thread call inserts: a save holds them and their encoded message, ~1 MiB.
BATCH_CHUNKS = 2
# Chunks one thread call fetches: a download holds this many (and the reply they came in) at a
# time, and downloads are many.
FETCH_CHUNKS = 1
# Threads reading media from MongoDB at once, and saving it: with the store's 32, below
# pymongo's pool of 100 connections. Each holds its chunks while it runs; twenty 20 MiB
# downloads and uploads at once peaked 16 MiB higher with 16 readers and 4-chunk batches.
THREADS = 8
SAVE_THREADS = 4


class MediaExists(Exception):
    """A save of a media id whose bytes are stored already: ids are never reused."""


class GridFSMedia:
    """MediaBytes in the GridFS bucket `fs` of `database`."""

    def __init__(self, database: Database[Document]) -> None:
        self.database = database
        self._files: Collection[Document] = database[f"{BUCKET}.files"]
        self._chunks: Collection[Document] = database[f"{BUCKET}.chunks"]
        self._limiter = trio.CapacityLimiter(THREADS)
        self._save_limiter = trio.CapacityLimiter(SAVE_THREADS)
        self._indexed = False

    @property
    def spool_dir(self) -> None:
        return None  # nothing of the media is this machine's: uploads wait in its temp folder

    async def _run(self, fn: Callable[[], _T]) -> _T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def save(self, media_id: str, source: IO[bytes]) -> int:
        return await trio.to_thread.run_sync(self._save, media_id, source,
                                             limiter=self._save_limiter)

    def _save(self, media_id: str, source: IO[bytes]) -> int:
        self._create_indexes()
        if self._files.find_one({"_id": media_id}, {"_id": 1}) is not None:
            raise MediaExists(f"media {media_id} has its bytes in GridFS already")
        self._chunks.delete_many({"files_id": media_id})  # what a save that died left
        length = n = 0
        try:
            while True:
                batch: list[Document] = []
                last = b""
                while len(batch) < BATCH_CHUNKS:
                    last = _read_up_to(source, CHUNK_BYTES)
                    if not last:
                        break
                    batch.append({"files_id": media_id, "n": n, "data": last})
                    length += len(last)
                    n += 1
                if batch:
                    self._chunks.insert_many(batch, ordered=True)
                if len(last) < CHUNK_BYTES:  # the source has ended
                    break
            self._files.insert_one({
                "_id": media_id, "length": Int64(length), "chunkSize": CHUNK_BYTES,
                "uploadDate": datetime.now(UTC), "filename": media_id,
            })
        except BaseException:
            self._chunks.delete_many({"files_id": media_id})
            raise
        return length

    def _create_indexes(self) -> None:
        """The indexes GridFS drivers create before a bucket's first write (the unique one
        also stops two writers interleaving chunks of one id)."""
        if self._indexed:
            return
        self._files.create_index([("filename", ASCENDING), ("uploadDate", ASCENDING)])
        self._chunks.create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)
        self._indexed = True

    async def open(self, media_id: str) -> GridFSBytes | None:
        document = await self._run(partial(self._files.find_one, {"_id": media_id}))
        if document is None:
            return None
        length, chunk_size = int(document["length"]), int(document["chunkSize"])
        modified = _utc(document["uploadDate"])
        tag = f"{modified.timestamp()}-{length}-{zlib.adler32(media_id.encode())}"
        return GridFSBytes(self, media_id, length, modified, tag, chunk_size)

    async def exists(self, media_id: str) -> bool:
        return await self._run(
            lambda: self._files.find_one({"_id": media_id}, {"_id": 1}) is not None)

    async def remove(self, media_id: str) -> None:
        def delete() -> None:
            try:
                GridFSBucket(self.database, BUCKET).delete(media_id)  # fs.files, then chunks
            except NoFile:
                self._chunks.delete_many({"files_id": media_id})  # delete() did, then raised

        await self._run(delete)

    async def stored_before(self, moment: datetime) -> AsyncGenerator[list[str], None]:
        """The `fs.files` documents uploaded before `moment`, a page of SWEEP_BATCH in `_id`
        order per worker thread call."""
        after = ""
        while page := await self._run(partial(self._files_after, after)):
            after = page[-1][0]
            if batch := [media_id for media_id, uploaded in page
                         if is_id(media_id) and _utc(uploaded) < moment]:
                yield batch

    def _files_after(self, after: str) -> list[tuple[str, datetime]]:
        found = self._files.find({"_id": {"$gt": after, "$type": "string"}},
                                 {"_id": 1, "uploadDate": 1})
        return [(document["_id"], document["uploadDate"])
                for document in found.sort("_id", ASCENDING).limit(SWEEP_BATCH)]

    async def remove_dead_saves(self, moment: datetime) -> int:
        """Chunks without their `fs.files` document, written before `moment`: found by each
        media's first chunk (n = 0), a page at a time in the (files_id, n) index's order."""
        removed, after = 0, ""
        while page := await self._run(partial(self._first_chunks_after, after)):
            after = page[-1][0]
            old = [media_id for media_id, written in page
                   if isinstance(written, ObjectId) and written.generation_time < moment]
            removed += await self._run(partial(self._remove_chunks_without_file, old))
        return removed

    def _first_chunks_after(self, after: str) -> list[tuple[str, object]]:
        found = self._chunks.find({"files_id": {"$gt": after, "$type": "string"}, "n": 0},
                                  {"_id": 1, "files_id": 1})
        return [(chunk["files_id"], chunk["_id"])
                for chunk in found.sort("files_id", ASCENDING).limit(SWEEP_BATCH)]

    def _remove_chunks_without_file(self, media_ids: list[str]) -> int:
        whole = {document["_id"] for document in self._files.find(
            {"_id": {"$in": media_ids}}, {"_id": 1})}
        dead = [media_id for media_id in media_ids if media_id not in whole]
        if dead:
            self._chunks.delete_many({"files_id": {"$in": dead}})
        return len(dead)

    async def fetch_chunks(self, media_id: str, first: int, end: int) -> list[tuple[int, bytes]]:
        """(n, data) of the chunks `first`..`end - 1` of `media_id` found, in order."""

        def find() -> list[tuple[int, bytes]]:
            cursor = self._chunks.find(
                {"files_id": media_id, "n": {"$gte": first, "$lt": end}},
                {"_id": 0, "n": 1, "data": 1},
            ).sort("n", ASCENDING)
            return [(int(chunk["n"]), bytes(chunk["data"])) for chunk in cursor]

        return await self._run(find)


@dataclasses.dataclass(frozen=True)
class GridFSBytes:
    bucket: GridFSMedia
    media_id: str
    length: int
    modified: datetime
    tag: str
    chunk_size: int

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        count = math.ceil(self.length / self.chunk_size)
        for first in range(0, count, FETCH_CHUNKS):
            end = min(first + FETCH_CHUNKS, count)
            found = await self.bucket.fetch_chunks(self.media_id, first, end)
            if [n for n, _ in found] != list(range(first, end)):
                raise BytesLost(self.media_id, f"GridFS chunks of {first}..{end - 1} missing")
            for n, data in found:
                expected = self.chunk_size if n < count - 1 else self.length - n * self.chunk_size
                if len(data) != expected:
                    raise BytesLost(self.media_id, f"GridFS chunk {n} has {len(data)} bytes, "
                                                   f"not {expected}")
                yield data


def _read_up_to(source: IO[bytes], size: int) -> bytes:
    """`size` bytes of `source`, fewer only at its end (a pipe's read may return less)."""
    data = source.read(size)
    while data and len(data) < size:
        more = source.read(size - len(data))
        if not more:
            break
        data += more
    return data


def _utc(moment: datetime) -> datetime:
    """pymongo (without tz_aware) decodes a BSON date as a naive UTC datetime."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
