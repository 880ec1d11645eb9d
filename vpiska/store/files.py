"""Media bytes on disk, one file per media id, written so a crash never leaves a torn file.

Bytes go to a temporary name, are fsynced, then renamed into place (rename is atomic on POSIX),
and the directory is fsynced so the rename itself survives. Only after that does the caller commit
the metadata record, so a record always points at complete bytes; a crash in between leaves an
orphan file with no record, which no endpoint can serve.

A save killed before its rename leaves its `.{id}.partial` file; the media sweep removes it
once old (`remove_dead_saves`), and the files no record names (`stored_before`).

A download reads the file in CHUNK pieces, each in a worker thread, so a large file costs one
chunk of memory however slowly its client reads.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import zlib
from collections.abc import AsyncGenerator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import trio

from vpiska.domain import is_id
from vpiska.store.media_bytes import SWEEP_BATCH, BytesLost

CHUNK = 256 * 1024


class MediaFiles:
    """MediaBytes in a directory of this machine (MEDIA_STORE=files)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # Saves hold a thread for a whole copy and its fsyncs; reads take the default limiter.
        self._limiter = trio.CapacityLimiter(4)

    @property
    def spool_dir(self) -> Path:
        return self.root  # the media volume, not a /tmp that may be memory

    def path(self, media_id: str) -> Path:
        return self.root / media_id

    async def open(self, media_id: str) -> FileBytes | None:
        path = self.path(media_id)
        try:
            found = await trio.to_thread.run_sync(path.stat)
        except FileNotFoundError:
            return None
        # The ETag quart's send_file gave these files before.
        tag = f"{found.st_mtime}-{found.st_size}-{zlib.adler32(bytes(path))}"
        return FileBytes(path, found.st_size, datetime.fromtimestamp(found.st_mtime, UTC), tag)

    async def exists(self, media_id: str) -> bool:
        return await trio.to_thread.run_sync(self.path(media_id).exists)

    async def save(self, media_id: str, source: IO[bytes]) -> int:
        """Copy `source` to the file of `media_id` durably; return the number of bytes."""
        return await trio.to_thread.run_sync(self._save, media_id, source, limiter=self._limiter)

    def _save(self, media_id: str, source: IO[bytes]) -> int:
        final = self.path(media_id)
        partial = final.with_name(f".{media_id}.partial")
        try:
            with open(partial, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
                size = out.tell()
            os.replace(partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        directory = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return size

    async def remove(self, media_id: str) -> None:
        await trio.to_thread.run_sync(self.path(media_id).unlink, True, limiter=self._limiter)

    async def stored_before(self, moment: datetime) -> AsyncGenerator[list[str], None]:
        """The media files last written before `moment`, read from the directory SWEEP_BATCH
        entries per worker thread call."""
        entries = await trio.to_thread.run_sync(os.scandir, self.root)
        try:
            while (batch := await trio.to_thread.run_sync(
                    _media_files_before, entries, moment.timestamp())) is not None:
                if batch:
                    yield batch
        finally:
            entries.close()

    async def remove_dead_saves(self, moment: datetime) -> int:
        return await trio.to_thread.run_sync(self._remove_partials_before, moment.timestamp(),
                                             limiter=self._limiter)

    def _remove_partials_before(self, cutoff: float) -> int:
        removed = 0
        with os.scandir(self.root) as entries:
            for entry in entries:
                if (_partial_of(entry.name) is not None and _written_before(entry, cutoff)):
                    os.unlink(entry.path)
                    removed += 1
        return removed


def _partial_of(name: str) -> str | None:
    """The media id of a save's temporary file name (`.{id}.partial`), if it is one."""
    if name.startswith(".") and name.endswith(".partial") and is_id(name[1:-8]):
        return name[1:-8]
    return None


def _written_before(entry: os.DirEntry[str], cutoff: float) -> bool:
    try:
        return entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff
    except FileNotFoundError:  # removed meanwhile (a delete, a sweep of another node)
        return False


def _media_files_before(entries: Iterator[os.DirEntry[str]], cutoff: float) -> list[str] | None:
    """The media files among the next SWEEP_BATCH entries written before `cutoff`; None once
    there are no more entries."""
    batch = list(itertools.islice(entries, SWEEP_BATCH))
    if not batch:
        return None
    return [entry.name for entry in batch if is_id(entry.name) and _written_before(entry, cutoff)]


@dataclasses.dataclass(frozen=True)
class FileBytes:
    path: Path
    length: int
    modified: datetime
    tag: str

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            file = await trio.to_thread.run_sync(open, self.path, "rb")
        except FileNotFoundError:
            raise BytesLost(self.path.name, "file deleted before it was sent") from None
        try:
            left = self.length
            while left > 0:
                chunk = await trio.to_thread.run_sync(file.read, min(CHUNK, left))
                if not chunk:
                    raise BytesLost(self.path.name, f"file ended {left} bytes short")
                left -= len(chunk)
                yield chunk
        finally:
            file.close()
