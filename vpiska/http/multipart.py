"""Reading a multipart upload as it arrives, with the total size bounded.

Quart's own form parser bounds a body by Content-Length only, so a chunked upload could grow
without limit; here werkzeug's sans-IO decoder is fed chunk by chunk, every byte is counted, and
the file part is spooled to disk (in memory up to SPOOL_IN_MEMORY), so memory stays bounded
whatever the client sends.

What a part says of its file (name, type) is handed over as said; `MediaLibrary.add` decides
what of it is stored.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import IO, NoReturn

import trio
from quart import request
from werkzeug.datastructures import Headers
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from vpiska.errors import DomainError, ErrorCode
from vpiska.http.body import mark_body_read
from vpiska.media import Upload

log = logging.getLogger(__name__)

# An upload past this goes to a temporary file: twenty parallel uploads hold 1.25 MiB here, where
# 1 MiB each (held twice over when a spool moves to disk) held 40 MiB.
SPOOL_IN_MEMORY = 64 * 1024
MAX_FIELD_BYTES = 4096  # plain form fields carry ids, nothing larger
MAX_PARTS = 16


class MultipartForm:
    """The plain fields and the one wanted file of a multipart request.

    Resource handling: the spooled file is the caller's; use the form as a context manager.
    """

    def __init__(self, file_field: str) -> None:
        self.file_field = file_field
        self.fields: dict[str, str] = {}
        self.upload: Upload | None = None

    def file(self) -> Upload:
        """The wanted file; InternalError (as the older backend answered) if it was not sent."""
        if self.upload is None:
            _malformed(f"multipart body without its file field {self.file_field!r}")
        return self.upload

    def __enter__(self) -> MultipartForm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.upload is not None:
            self.upload.data.close()


async def read_multipart(file_field: str, max_bytes: int,
                         spool_dir: Path | None) -> MultipartForm:
    """Parse the request as multipart/form-data, keeping the file part named `file_field`,
    spooled in `spool_dir` (None: the system's temporary folder) past SPOOL_IN_MEMORY.

    Error handling: `invalid Content-Type` for another content type; PayloadTooLarge past
    `max_bytes`; InternalError (logged) for a malformed body.
    """
    if request.mimetype != "multipart/form-data":
        raise DomainError(ErrorCode.INVALID_CONTENT_TYPE)
    if request.content_length is not None and request.content_length > max_bytes:
        raise DomainError(ErrorCode.PAYLOAD_TOO_LARGE)
    boundary = request.mimetype_params.get("boundary", "")
    if not boundary:
        _malformed("multipart body without a boundary")
    decoder = _LenientDecoder(boundary.encode("latin-1"), max_parts=MAX_PARTS)
    form = MultipartForm(file_field)
    try:
        reader = _PartReader(form, spool_dir)
        received = 0
        async for chunk in request.body:
            received += len(chunk)
            if received > max_bytes:
                raise DomainError(ErrorCode.PAYLOAD_TOO_LARGE)
            decoder.receive_data(chunk)
            await reader.drain(decoder)
        mark_body_read()
        decoder.receive_data(None)
        await reader.drain(decoder)
        if not reader.finished:
            _malformed("multipart body ended before its closing boundary")
    except ValueError as exc:  # werkzeug's word for a malformed body
        form.__exit__()
        _malformed(str(exc))
    except BaseException:
        form.__exit__()
        raise
    return form


class _LenientDecoder(MultipartDecoder):
    """werkzeug's decoder, taking part headers that are not UTF-8.

    werkzeug decodes a part's headers as strict UTF-8, so one other byte (a file name in a
    legacy encoding) fails the whole body; the older backend took any bytes. Here each such
    byte becomes U+FFFD before werkzeug reads the headers: the name keeps the rest, and a type
    with U+FFFD is not a media type, so it is stored as application/octet-stream.
    `_parse_headers` is werkzeug's private method (3.x); should a release drop it, these
    bodies are refused as malformed again, and tests/test_media.py says so.
    """

    def _parse_headers(self, data: bytes | bytearray) -> Headers:
        return super()._parse_headers(bytes(data).decode("utf-8", "replace").encode())


def _malformed(cause: str) -> NoReturn:
    log.info("malformed multipart body", extra={"path": request.path, "cause": cause})
    raise DomainError(ErrorCode.INTERNAL_ERROR)


class _PartReader:
    """Routes decoder events: small fields to memory, the wanted file to a spool file."""

    def __init__(self, form: MultipartForm, spool_dir: Path | None) -> None:
        self._form = form
        self._spool_dir = spool_dir
        self._field: str | None = None  # name of the plain field being read
        self._field_data = bytearray()
        self._spool: IO[bytes] | None = None  # the wanted file being read
        self.finished = False

    async def drain(self, decoder: MultipartDecoder) -> None:
        while True:
            event = decoder.next_event()
            if isinstance(event, NeedData):
                return
            if isinstance(event, Epilogue):
                self.finished = True
                return
            if isinstance(event, File):
                self._start_file(event)
            elif isinstance(event, Field):
                self._field, self._field_data = event.name, bytearray()
            elif isinstance(event, Data):
                await self._data(event)

    def _start_file(self, event: File) -> None:
        self._field = None
        if event.name != self._form.file_field or self._form.upload is not None:
            return  # a part nobody asked for: its bytes are counted, then dropped
        self._spool = tempfile.SpooledTemporaryFile(
            SPOOL_IN_MEMORY, dir=None if self._spool_dir is None else str(self._spool_dir))
        content_type = event.headers.get("content-type", "")
        self._form.upload = Upload(event.filename or "", content_type, self._spool)

    async def _data(self, event: Data) -> None:
        if self._field is not None:
            self._field_data += event.data
            if len(self._field_data) > MAX_FIELD_BYTES:
                raise DomainError(ErrorCode.PAYLOAD_TOO_LARGE)
            if not event.more_data:
                self._form.fields[self._field] = self._field_data.decode("utf-8", "replace")
                self._field = None
        elif self._spool is not None:
            if event.data:
                await trio.to_thread.run_sync(self._spool.write, event.data)
            if not event.more_data:
                self._spool.seek(0)
                self._spool = None
