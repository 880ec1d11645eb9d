"""Media bytes on disk, one file per media id, written so a crash never leaves a torn file.

Bytes go to a temporary name, are fsynced, then renamed into place (rename is atomic on POSIX),
and the directory is fsynced so the rename itself survives. Only after that does the caller commit
the metadata record, so a record always points at complete bytes; a crash in between leaves an
orphan file with no record, which no endpoint can serve.

A download reads the file in CHUNK pieces, each in a worker thread, so a large file costs one
chunk of memory however slowly its client reads.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import zlib
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import trio

from vpiska.store.media_bytes import BytesLost

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
