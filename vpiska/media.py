"""Media: bytes in MediaFiles, metadata in the Store, kept consistent in that order.

Upload writes the bytes durably first and the record second, removing the bytes if the record
fails; delete removes the record first and the bytes second. Either way a crash leaves at worst
an orphan file, never a record the API would serve as broken. Whether media is still in use
(an event lists it, a user's image is it) is the store's decision, taken with the delete.
"""

from __future__ import annotations

import dataclasses
from typing import BinaryIO

import trio

from vpiska.domain import Media, new_id, utc_now
from vpiska.errors import DomainError, ErrorCode
from vpiska.store import MediaFiles, Store


@dataclasses.dataclass(frozen=True)
class Upload:
    """A file a client sent: its bytes (already bounded and on disk) and what it said of them."""

    filename: str
    content_type: str
    data: BinaryIO


class MediaLibrary:
    def __init__(self, store: Store, files: MediaFiles) -> None:
        self._store = store
        self.files = files

    async def add(self, upload: Upload) -> Media:
        media_id = new_id()
        size = await self.files.save(media_id, upload.data)
        media = Media(media_id, upload.filename, upload.content_type, size, utc_now())
        try:
            await self._store.add_media(media)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.files.remove(media_id)
            raise
        return media

    async def get(self, media_id: str) -> Media:
        media = await self._store.media(media_id)
        if media is None:
            raise DomainError(ErrorCode.MEDIA_NOT_FOUND)
        return media

    async def delete(self, media_id: str) -> None:
        """MediaNotFound, or MediaInUse (from the store, which then deleted nothing)."""
        if not await self._store.delete_media(media_id):
            raise DomainError(ErrorCode.MEDIA_NOT_FOUND)
        await self.files.remove(media_id)
