"""`/api/v1/media*`: upload, download, metadata and delete of stored files."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, send_file

from vpiska.config import Config
from vpiska.errors import DomainError
from vpiska.http.body import id_codes, require
from vpiska.http.envelope import success
from vpiska.http.multipart import read_multipart
from vpiska.media import MediaLibrary


def media_routes(config: Config, media: MediaLibrary) -> Blueprint:
    routes = Blueprint("media", __name__, url_prefix="/api/v1/media")

    @routes.post("")
    async def upload() -> Any:
        with await read_multipart("file", config.max_upload_bytes, media.files.root) as form:
            stored = await media.add(form.file())
        return success(stored.id)

    @routes.get("/<media_id>")
    async def download(media_id: str) -> Any:
        # A raw-bytes endpoint: errors are bare HTTP statuses, as the older backend sent them.
        if id_codes(media_id):
            return Response(b"", status=400)
        try:
            found = await media.get(media_id)
        except DomainError:
            return Response(b"", status=404)
        response = await send_file(media.files.path(found.id), conditional=False)
        response.headers["Content-Type"] = found.content_type
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

