"""Media bytes on disk, one file per media id, written so a crash never leaves a torn file.

Bytes go to a temporary name, are fsynced, then renamed into place (rename is atomic on POSIX),
and the directory is fsynced so the rename itself survives. Only after that does the caller commit
the metadata record, so a record always points at complete bytes; a crash in between leaves an
orphan file with no record, which no endpoint can serve.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO

import trio

CHUNK = 256 * 1024


class MediaFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._limiter = trio.CapacityLimiter(4)

    def path(self, media_id: str) -> Path:
        return self.root / media_id

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
