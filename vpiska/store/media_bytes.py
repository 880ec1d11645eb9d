"""The bytes of media, wherever they live: the interface the server and `media import` use.

Two homes implement it: files under MEDIA_PATH (`vpiska/store/files.py`), the home of one
machine, and GridFS in MongoDB (`vpiska/store/gridfs.py`), the home every node sharing the
database can serve from. MEDIA_STORE picks one (vpiska/config.py).

Both keep two promises the media library builds on (vpiska/media.py):

- Bytes are streamed both ways in bounded chunks: neither a save nor a read holds a whole
  upload in memory, so many large transfers at once cost little more than one.
- A save is complete or absent: the bytes become visible (`exists`, `open`) only once all of
  them are durable. A save that died halfway (a crash, a kill) leaves nothing that `open`
  finds, and the next save of the same id starts clean.

What a crash can leave is found again by the media sweep (vpiska/media_sweep.py): bytes whose
record was never written or already deleted (`stored_before`), and what a save that died
halfway wrote (`remove_dead_saves`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from pathlib import Path
from typing import IO, Protocol

# Media a sweep looks at in one call to the store or the bytes' home.
SWEEP_BATCH = 500


class BytesLost(Exception):
    """Stored bytes vanished or broke while being read (deleted under a download, a chunk
    missing in the database): the reader cannot send the length it promised."""

    def __init__(self, media_id: str, problem: str) -> None:
        super().__init__(f"media {media_id}: {problem}")
        self.media_id = media_id


class StoredBytes(Protocol):
    """The bytes of one media, found: what a response says of them before sending them."""

    @property
    def length(self) -> int: ...

    @property
    def modified(self) -> datetime:
        """When the bytes were stored (the response's Last-Modified)."""

    @property
    def tag(self) -> str:
        """A validator that changes when the bytes do (the response's ETag)."""

    def chunks(self) -> AsyncGenerator[bytes, None]:
        """The bytes in order, `length` of them in all; BytesLost if they cannot be.
        Whatever the generator opens it closes when it ends or is closed (`aclose`)."""


class MediaBytes(Protocol):
    @property
    def spool_dir(self) -> Path | None:
        """Where an upload waits for `save` (None: the system's temporary folder)."""

    async def save(self, media_id: str, source: IO[bytes]) -> int:
        """Store `source`, read to its end, as the bytes of `media_id`, which has none yet;
        return how many bytes that was. Durable once it returns."""

    async def open(self, media_id: str) -> StoredBytes | None:
        """The bytes of `media_id`, None if there are none."""

    async def exists(self, media_id: str) -> bool: ...

    async def remove(self, media_id: str) -> None:
        """Remove the bytes of `media_id`, if any (what a save that died left included)."""

    def stored_before(self, moment: datetime) -> AsyncGenerator[list[str], None]:
        """The ids (vpiska's own: uuid4) of the media whose bytes were complete before
        `moment`, every one of them, SWEEP_BATCH at most at a time, in no set order. The
        caller closes the generator (`contextlib.aclosing`)."""

    async def remove_dead_saves(self, moment: datetime) -> int:
        """Remove what saves that died before `moment` (a kill mid-save) left, nothing that a
        save under way or complete holds; return of how many media."""
