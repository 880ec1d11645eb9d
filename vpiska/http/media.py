"""`/api/v1/media*`: upload, download, metadata and delete of stored files.

Stored bytes are whatever a client uploaded, served from the API's own origin, so a download
must never run as a page of it (API.md, Media (fix)). Every download says `nosniff`, so a
browser believes the stored type rather than guessing from the bytes; only types a browser
shows passively are served inline, and anything else is a download whose CSP would sandbox it
even if opened. The `Content-Type` stays the stored one: clients read it.

A download streams the stored bytes chunk by chunk, wherever they live (files or GridFS), with
the headers quart's `send_file` gave a file before: the exact `Content-Length`, Last-Modified,
ETag and a public cache lifetime of SEND_FILE_MAX_AGE_DEFAULT.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from quart import Blueprint, Response, current_app

from vpiska.config import Config
from vpiska.errors import DomainError
from vpiska.http.body import id_codes, require
from vpiska.http.bounded_body import ResponseCutShort
from vpiska.http.envelope import success
from vpiska.http.multipart import read_multipart
from vpiska.media import OCTET_STREAM, MediaLibrary, is_media_type
from vpiska.store import BytesLost, StoredBytes

log = logging.getLogger(__name__)

# Types a browser renders without running anything of theirs: raster images, sound, video and
# plain text (which, not sniffed, stays text). Not here on purpose: SVG and every XML (scripts),
# HTML, JavaScript, PDF (a viewer that runs scripts) and types we do not know.
INLINE_TYPES = frozenset({
    "image/jpeg", "image/png", "image/apng", "image/gif", "image/webp", "image/avif",
    "image/bmp", "text/plain",
})
INLINE_TOP_LEVEL_TYPES = frozenset({"audio", "video"})

NOSNIFF = {"X-Content-Type-Options": "nosniff"}
SANDBOXED_DOWNLOAD = {
    "Content-Disposition": "attachment",
    "Content-Security-Policy": "sandbox; default-src 'none'",
}


def shown_inline(content_type: str) -> bool:
    essence = content_type.partition(";")[0].strip(" \t").lower()
    return (essence in INLINE_TYPES
            or essence.partition("/")[0] in INLINE_TOP_LEVEL_TYPES)


def download_headers(content_type: str) -> dict[str, str]:
    """The headers stored bytes of `content_type` are sent with."""
    if not is_media_type(content_type):  # a record from before uploads were checked
        content_type = OCTET_STREAM
    headers = {"Content-Type": content_type, **NOSNIFF}
    if not shown_inline(content_type):
        headers |= SANDBOXED_DOWNLOAD
    return headers


def streamed(media_id: str, stored: StoredBytes) -> Response:
    """A response sending `stored` in chunks, with the length and the cache headers of quart's
    `send_file`. The chunks' iterator is closed with the response, sent or not."""
    response = Response(_chunks(media_id, stored), mimetype=OCTET_STREAM)
    response.content_length = stored.length
    response.last_modified = stored.modified
    response.cache_control.public = True
    max_age = current_app.get_send_file_max_age(None)
    if max_age is not None:
        response.cache_control.max_age = max_age
        response.expires = datetime.now(UTC) + timedelta(seconds=max_age)
    response.set_etag(stored.tag)
    return response


async def _chunks(media_id: str, stored: StoredBytes) -> AsyncIterator[bytes]:
    """The chunks of `stored`; if they break after the head is sent, one error line and a
    connection closed mid-body (the client sees fewer bytes than Content-Length)."""
    chunks = stored.chunks()
    try:
        async for chunk in chunks:
            yield chunk
    except BytesLost as lost:
        log.error("media bytes broke while being sent: download cut short",
                  extra={"media_id": media_id, "cause": str(lost)})
        raise ResponseCutShort from None
    finally:
        await chunks.aclose()


def media_routes(config: Config, media: MediaLibrary) -> Blueprint:
    routes = Blueprint("media", __name__, url_prefix="/api/v1/media")

    @routes.post("")
    async def upload() -> Any:
        with await read_multipart("file", config.max_upload_bytes, media.spool_dir) as form:
            stored = await media.add(form.file())
        return success(stored.id)

    @routes.get("/<media_id>")
    async def download(media_id: str) -> Any:
        # A raw-bytes endpoint: errors are bare HTTP statuses, as the older backend sent them.
        if id_codes(media_id):
            return Response(b"", status=400, headers=NOSNIFF)
        try:
            found, stored = await media.open(media_id)
        except DomainError:
            return Response(b"", status=404, headers=NOSNIFF)
        response = streamed(found.id, stored)
        response.headers.update(download_headers(found.content_type))
        return response

    @routes.get("/metadata/<media_id>")
    async def metadata(media_id: str) -> Any:
        require(id_codes(media_id))
        found = await media.get(media_id)
        return success(
            {"id": found.id, "name": found.name, "size": found.size,
             "contentType": found.content_type}
        )

    @routes.delete("/<media_id>")
    async def delete(media_id: str) -> Any:
        require(id_codes(media_id))
        await media.delete(media_id)
        return success(None)

    return routes
