"""Media: bytes in MediaBytes (files or GridFS), metadata in the Store, kept consistent in that
order.

Upload writes the bytes durably first and the record second, removing the bytes if the record
fails; delete removes the record first and the bytes second. Either way a crash leaves at worst
orphan bytes, never a record the API would serve as broken; the media sweep
(vpiska/media_sweep.py) removes those once old. Whether media is still in use
(an event lists it, a user's image is it) is the store's decision, taken with the delete.

Media that its event or its user lets go of (`events/media/remove`, a replaced avatar) is
deleted, record and bytes, as the older backend deleted it: a photo taken down must not stay
downloadable by anyone who kept its id. The reference goes first, the media after (`discard`),
so a crash in between leaves a whole media nothing refers to, still served, never an event or a
user pointing at bytes that are gone.

A record can still lose its bytes by other means: a lost or restored disk in `files` mode, a
record the older backend wrote whose file `media import` did not find. Such a media is answered
as missing (404), with one warning naming it, rather than as a server error.

What a client says of its file is kept only as far as it is safe: the type is sent back as the
`Content-Type` of the download, so it must be a well-formed media type, and the name must be
text any store can hold (sqlite refuses a lone surrogate) and any client can read.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import IO

import trio

from vpiska.domain import Media, new_id, utc_now
from vpiska.errors import DomainError, ErrorCode
from vpiska.store import MediaBytes, Store, StoredBytes

log = logging.getLogger(__name__)

OCTET_STREAM = "application/octet-stream"
# RFC 6838 bounds type and subtype at 127 characters each; parameters (a charset) fit in the
# rest. Longer is not a type any client means.
MAX_MEDIA_TYPE_CHARS = 255
# What common file systems allow in one name.
MAX_NAME_CHARS = 255

_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"  # RFC 6838 restricted-name
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"  # RFC 9110 token: a parameter's name or value
_QUOTED = r'"(?:[\t !#-\[\]-~]|\\[\t -~])*"'  # RFC 9110 quoted-string, ASCII only
_MEDIA_TYPE = re.compile(
    rf"{_NAME}/{_NAME}(?:[ \t]*;[ \t]*(?:{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))?)*"
)
# Control characters and lone surrogates (undecodable bytes, as Python's surrogateescape
# keeps them): nothing a file name means, and the latter cannot be encoded as UTF-8 at all.
_NOT_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def is_media_type(value: str) -> bool:
    """Whether `value` is a well-formed media type: RFC 6838 `type/subtype`, then RFC 9110
    parameters, all ASCII, at most MAX_MEDIA_TYPE_CHARS long."""
    return len(value) <= MAX_MEDIA_TYPE_CHARS and _MEDIA_TYPE.fullmatch(value) is not None


def stored_content_type(said: str) -> str:
    """The type a client gave its file, if well-formed, else application/octet-stream."""
    return said if is_media_type(said) else OCTET_STREAM


def stored_name(said: str) -> str:
    """The name a client gave its file as valid text: each control character or lone surrogate
    replaced by U+FFFD, cut to MAX_NAME_CHARS."""
    return _NOT_TEXT.sub("\ufffd", said[:MAX_NAME_CHARS])


@dataclasses.dataclass(frozen=True)
class Upload:
    """A file a client sent: its bytes (already bounded and on disk) and what it said of them,
    as it said it. `MediaLibrary.add` keeps what is safe to store and to send back."""

    filename: str
    content_type: str
    data: IO[bytes]


class MediaLibrary:
    def __init__(self, store: Store, media_bytes: MediaBytes) -> None:
        self._store = store
        self.media_bytes = media_bytes

    @property
    def spool_dir(self) -> Path | None:
        """Where uploads wait to be added."""
        return self.media_bytes.spool_dir

    async def add(self, upload: Upload) -> Media:
        media_id = new_id()
        size = await self.media_bytes.save(media_id, upload.data)
        media = Media(media_id, stored_name(upload.filename),
                      stored_content_type(upload.content_type), size, utc_now())
        try:
            await self._store.add_media(media)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.media_bytes.remove(media_id)
            raise
        return media

    async def get(self, media_id: str) -> Media:
        media = await self._store.media(media_id)
        if media is None:
            raise DomainError(ErrorCode.MEDIA_NOT_FOUND)
        return media

    async def open(self, media_id: str) -> tuple[Media, StoredBytes]:
        """The record and the bytes of a media; MediaNotFound if either is missing."""
        media = await self.get(media_id)
        stored = await self.media_bytes.open(media_id)
        if stored is None:
            log.warning("media has a record but no bytes: answered as not found",
                        extra={"media_id": media_id})
            raise DomainError(ErrorCode.MEDIA_NOT_FOUND)
        return media, stored

    async def delete(self, media_id: str) -> None:
        """MediaNotFound, or MediaInUse (from the store, which then deleted nothing)."""
        if not await self._store.delete_media(media_id):
            raise DomainError(ErrorCode.MEDIA_NOT_FOUND)
        await self.media_bytes.remove(media_id)

    async def discard(self, media_id: str) -> None:
        """Delete the record and the bytes of a media whose reference the store has just
        dropped (an event's media list, a user's image), so a later download is 404.

        Kept, with a line saying so, if the store finds it still in use: the older backend's
        data may share one media between an event and a user. No record: the bytes are
        removed all the same (what a discard cut short between the two left).

        Error handling: store and bytes errors escape; the media is then whole (the record
        failed) or a record-less orphan of bytes (the bytes failed), which no endpoint serves.
        Called under a shield by callers that must not stop between the reference and this.
        """
        try:
            found = await self._store.delete_media(media_id)
        except DomainError as refusal:
            if refusal.codes != (ErrorCode.MEDIA_IN_USE,):
                raise
            log.info("media let go of is still in use elsewhere: kept",
                     extra={"media_id": media_id})
            return
        await self.media_bytes.remove(media_id)
        log.info("media let go of: record and bytes deleted",
                 extra={"media_id": media_id, "record_found": found})
