"""`/api/v1/media*` over a real socket, and the bytes-before-record rule: every test of a server
runs on both homes of media bytes, sqlite with files and MongoDB with GridFS."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.clients import host_event
from tests.helpers.fakes import FaultyStore, StoreFailure
from tests.helpers.media import a_home_of_bytes, bytes_of, stored_ids
from tests.helpers.mongodb_fixtures import MongoDatabase
from tests.helpers.request_bodies import Chunks
from tests.helpers.server import Server
from vpiska.config import StoreLocation
from vpiska.domain import new_id
from vpiska.media import MediaLibrary, Upload
from vpiska.store import MediaFiles
from vpiska.store.memory import MemoryStore
from vpiska.store.mongo import MongoStore
from vpiska.store.sqlite import SqliteStore

MAX_UPLOAD = 4096


@pytest.fixture(params=["files", "gridfs"])
def media_store(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The settings of one home of media bytes: sqlite with files, MongoDB with GridFS."""
    if request.param == "files":
        return {}
    database: MongoDatabase = request.getfixturevalue("mongodb_database")
    return {"store": StoreLocation("mongodb", database.url), "db_name": database.name,
            "media_store": "gridfs"}


@pytest.fixture
def config_overrides(media_store: dict[str, Any]) -> dict[str, Any]:
    return {"max_upload_bytes": MAX_UPLOAD, **media_store}


async def nothing_stored(server: Server) -> bool:
    """Whether no bytes at all are stored: no file, or no GridFS file and no chunk."""
    home = bytes_of(server)
    if isinstance(home, MediaFiles):
        return list(home.root.iterdir()) == []
    assert isinstance(server.store, MongoStore)
    database = server.store.database
    return (database["fs.files"].count_documents({}) == 0
            and database["fs.chunks"].count_documents({}) == 0)


async def upload(server: Server, data: bytes, content_type: str = "image/jpeg") -> str:
    result = await server.ok("/api/v1/media", files={"file": ("cat.jpg", data, content_type)})
    assert isinstance(result, str)
    return result


async def test_upload_download_metadata_delete(server: Server) -> None:
    media_id = await upload(server, b"\xff\xd8jpeg bytes")
    response = await server.http.get(f"/api/v1/media/{media_id}")
    assert response.status_code == 200
    assert response.content == b"\xff\xd8jpeg bytes"
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["content-length"] == "12"
    meta = (await server.http.get(f"/api/v1/media/metadata/{media_id}")).json()
    assert meta["result"] == {"id": media_id, "name": "cat.jpg", "size": 12,
                              "contentType": "image/jpeg"}
    deleted = (await server.http.delete(f"/api/v1/media/{media_id}")).json()
    assert deleted == {"isSuccess": True, "errors": None, "result": None}
    assert (await server.http.get(f"/api/v1/media/{media_id}")).status_code == 404
    assert not await bytes_of(server).exists(media_id)
    again = (await server.http.delete(f"/api/v1/media/{media_id}")).json()
    assert again["errors"] == [{"errorCode": "MediaNotFound"}]


async def test_a_record_whose_bytes_are_gone_is_not_found_with_one_warning(
    server: Server, log_lines: list[dict[str, Any]]
) -> None:
    media_id = await upload(server, b"bytes")
    await bytes_of(server).remove(media_id)  # a lost disk, a file `media import` did not find
    response = await server.http.get(f"/api/v1/media/{media_id}")
    assert (response.status_code, response.content) == (404, b"")
    assert response.headers["x-content-type-options"] == "nosniff"
    warnings = [line for line in log_lines if line["level"] in ("warning", "error", "critical")]
    assert [(line["event"], line["media_id"]) for line in warnings] == [
        ("media has a record but no bytes: answered as not found", media_id)]
    assert "traceback" not in warnings[0]
    meta = (await server.http.get(f"/api/v1/media/metadata/{media_id}")).json()
    assert meta["result"]["size"] == 5  # the record itself is intact


@pytest.mark.parametrize("media_store", ["gridfs"], indirect=True)
async def test_bytes_broken_after_the_head_cut_the_download_with_one_error(
    server: Server, log_lines: list[dict[str, Any]]
) -> None:
    """A GridFS chunk gone under its file (what the head promised cannot be sent): the
    connection closes mid-body, one error line says why, and the server serves on."""
    media_id = await upload(server, b"bytes")
    assert isinstance(server.store, MongoStore)
    server.store.database["fs.chunks"].delete_many({"files_id": media_id})
    with pytest.raises(httpx.RemoteProtocolError):
        await server.http.get(f"/api/v1/media/{media_id}")
    problems = [line for line in log_lines if line["level"] in ("warning", "error", "critical")]
    assert [(line["event"], line["media_id"]) for line in problems] == [
        ("media bytes broke while being sent: download cut short", media_id)]
    assert "traceback" not in problems[0]
    assert await is_served(server, await upload(server, b"more"))


async def delete_codes(server: Server, media_id: str) -> list[str] | None:
    """The codes of `DELETE /api/v1/media/{media_id}`; None when it succeeded."""
    envelope = (await server.http.delete(f"/api/v1/media/{media_id}")).json()
    assert list(envelope) == ["isSuccess", "errors", "result"]
    assert envelope["result"] is None
    return None if envelope["isSuccess"] else [e["errorCode"] for e in envelope["errors"]]


async def is_served(server: Server, media_id: str) -> bool:
    status = (await server.http.get(f"/api/v1/media/{media_id}")).status_code
    assert status in (200, 404)
    return status == 200


async def test_a_users_image_is_in_use_until_replaced_then_deleted(server: Server) -> None:
    token = (await server.sign_up())["accessToken"]

    async def set_image() -> str:
        result = await server.ok("/api/v1/users/media/set", token=token,
                                 files={"image": ("me.png", b"png", "image/png")})
        assert isinstance(result["imageId"], str)
        return result["imageId"]

    first = await set_image()
    assert await delete_codes(server, first) == ["MediaInUse"]
    assert await is_served(server, first)
    second = await set_image()
    assert not await is_served(server, first)
    assert await delete_codes(server, first) == ["MediaNotFound"]
    assert await delete_codes(server, second) == ["MediaInUse"]


async def test_an_events_media_is_in_use_until_removed_then_deleted_and_after_close(
    server: Server
) -> None:
    token, event_id = await host_event(server)
    for name in ("kept.png", "removed.png"):
        await server.ok("/api/v1/events/media/add", token=token, data={"eventId": event_id},
                        files={"media": (name, b"png", "image/png")})
    event = await server.ok("/api/v1/events/get", {"eventId": event_id})
    kept, removed = (media["id"] for media in event["media"])

    assert await delete_codes(server, kept) == ["MediaInUse"]
    assert await delete_codes(server, removed) == ["MediaInUse"]
    await server.ok("/api/v1/events/media/remove", {"eventId": event_id, "mediaId": removed},
                    token=token)
    assert not await is_served(server, removed)
    assert await delete_codes(server, removed) == ["MediaNotFound"]

    await server.ok("/api/v1/events/close", {"eventId": event_id}, token=token)
    assert await delete_codes(server, kept) == ["MediaInUse"]
    assert await is_served(server, kept)


async def test_media_nothing_refers_to_is_deleted(server: Server) -> None:
    await host_event(server)  # an event and a user exist, neither refers to this media
    media_id = await upload(server, b"loose")
    assert await delete_codes(server, media_id) is None
    assert not await is_served(server, media_id)
    assert await delete_codes(server, media_id) == ["MediaNotFound"]


# Serving what clients uploaded.

SANDBOXED = {"content-disposition": "attachment",
             "content-security-policy": "sandbox; default-src 'none'"}
INLINE = {"content-disposition": None, "content-security-policy": None}


async def served_headers(server: Server, media_id: str) -> dict[str, str | None]:
    response = await server.http.get(f"/api/v1/media/{media_id}")
    assert response.status_code == 200
    return {name: response.headers.get(name) for name in (
        "content-type", "x-content-type-options", "content-disposition",
        "content-security-policy")}


async def test_a_type_a_browser_could_run_is_a_sandboxed_download(server: Server) -> None:
    for content_type in ("text/html", "TEXT/HTML", "text/html; charset=utf-8",
                         "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml",
                         "application/javascript", "text/javascript", "application/pdf",
                         "application/octet-stream", "application/x-vpiska", "image/x-unknown"):
        media_id = await upload(server, b"<script>alert(document.domain)</script>", content_type)
        assert await served_headers(server, media_id) == {
            "content-type": content_type, "x-content-type-options": "nosniff", **SANDBOXED}


async def test_images_sound_video_and_plain_text_are_shown_inline(server: Server) -> None:
    for content_type in ("image/png", "image/jpeg", "IMAGE/GIF", "image/webp", "image/avif",
                         "image/bmp", "audio/mpeg", "video/mp4", "text/plain; charset=utf-8"):
        media_id = await upload(server, b"bytes", content_type)
        assert await served_headers(server, media_id) == {
            "content-type": content_type, "x-content-type-options": "nosniff", **INLINE}


async def test_bare_statuses_are_not_sniffed_either(server: Server) -> None:
    for path, status in ((new_id(), 404), ("not-a-uuid", 400)):
        response = await server.http.get(f"/api/v1/media/{path}")
        assert (response.status_code, response.content) == (status, b"")
        assert response.headers["x-content-type-options"] == "nosniff"


BOUNDARY = "vpiska-test-boundary"


async def upload_part(server: Server, disposition: bytes, part_headers: bytes = b"", *,
                      path: str = "/api/v1/media", fields: dict[str, str] | None = None,
                      token: str | None = None) -> Any:
    """Upload one file part written byte for byte, as no well-behaved client library would,
    after the plain `fields`."""
    body = b""
    for name, value in (fields or {}).items():
        body += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                 f"{value}\r\n").encode()
    body += (f"--{BOUNDARY}\r\n".encode() + b"Content-Disposition: form-data; " + disposition
             + b"\r\n" + part_headers + b"\r\nbytes\r\n" + f"--{BOUNDARY}--\r\n".encode())
    return await server.ok(path, content=body, token=token,
                           headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


async def metadata(server: Server, media_id: str) -> dict[str, Any]:
    """The metadata's result, checked to be valid JSON: UTF-8 without lone surrogates, which
    json.loads would take in `\\ud800` escapes."""
    response = await server.http.get(f"/api/v1/media/metadata/{media_id}")
    envelope = json.loads(response.content.decode("utf-8"))
    assert envelope["isSuccess"] is True
    result: dict[str, Any] = envelope["result"]
    result["name"].encode("utf-8")
    return result


@pytest.mark.parametrize("content_type", [
    pytest.param(b"", id="empty"),
    pytest.param(b"image", id="no-subtype"),
    pytest.param(b"text/html garbage", id="space"),
    pytest.param(b"<script>/x", id="not-a-token"),
    pytest.param(b"image/png; charset", id="parameter-without-value"),
    pytest.param(b"image/png; a=\"open", id="unclosed-quote"),
    pytest.param("image/pñg".encode(), id="non-ascii"),
    pytest.param(b"image/png\xff", id="not-utf-8"),
    pytest.param(b"image/" + b"x" * 300, id="too-long"),
])
async def test_a_malformed_content_type_is_stored_and_served_as_octet_stream(
    server: Server, content_type: bytes
) -> None:
    media_id = await upload_part(server, b'name="file"; filename="a.png"',
                                 b"Content-Type: " + content_type + b"\r\n")
    assert (await metadata(server, media_id))["contentType"] == "application/octet-stream"
    assert await served_headers(server, media_id) == {
        "content-type": "application/octet-stream", "x-content-type-options": "nosniff",
        **SANDBOXED}


async def test_a_part_without_content_type_is_octet_stream(server: Server) -> None:
    media_id = await upload_part(server, b'name="file"; filename="a.png"')
    assert (await metadata(server, media_id))["contentType"] == "application/octet-stream"


async def test_an_events_media_carries_the_stored_type(server: Server) -> None:
    token, event_id = await host_event(server)
    await upload_part(server, b'name="media"; filename="a.png"',
                      b"Content-Type: text/html <b>\r\n", path="/api/v1/events/media/add",
                      fields={"eventId": event_id}, token=token)
    [media] = (await server.ok("/api/v1/events/get", {"eventId": event_id}))["media"]
    assert media["contentType"] == "application/octet-stream"


@pytest.mark.parametrize(("disposition", "stored"), [
    pytest.param(b'filename="caf\xe9.png"', "caf\ufffd.png", id="latin-1"),
    pytest.param(b'filename="\xed\xa0\x80.png"', "\ufffd\ufffd\ufffd.png",
                 id="utf-8-of-a-surrogate"),
    pytest.param(b'filename="%ff%ed%a0%80.png"', "%ff%ed%a0%80.png", id="percent-escapes"),
    pytest.param(b"filename*=utf-8''%ff%ed%a0%80.png", "\ufffd\ufffd\ufffd\ufffd.png",
                 id="rfc-2231"),
    pytest.param(b'filename="a\x00b\x1b[31m\x7f.png"', "a\ufffdb\ufffd[31m\ufffd.png",
                 id="control-characters"),
    pytest.param(b'filename="' + "я".encode() * 1000 + b'"', "я" * 255, id="long"),
])
async def test_a_hostile_file_name_is_stored_as_valid_text(
    server: Server, disposition: bytes, stored: str
) -> None:
    media_id = await upload_part(server, b'name="file"; ' + disposition,
                                 b"Content-Type: image/png\r\n")
    meta = await metadata(server, media_id)
    assert meta["name"] == stored
    assert meta["contentType"] == "image/png"
    assert (await server.http.get(f"/api/v1/media/{media_id}")).content == b"bytes"


async def test_a_name_that_is_not_unicode_is_stored_as_text(tmp_path: Path) -> None:
    """No werkzeug 3 hands a lone surrogate over; an older one, or a future caller, might."""
    store = await SqliteStore.open(tmp_path / "db.sqlite")
    try:
        library = MediaLibrary(store, MediaFiles(tmp_path / "media"))
        added = await library.add(Upload("cat\udcff.png", "image/png", io.BytesIO(b"x")))
        assert await store.media(added.id) == added
        assert added.name == "cat\ufffd.png"
    finally:
        await store.aclose()


async def test_unknown_and_malformed_ids(server: Server) -> None:
    missing = new_id()
    response = await server.http.get(f"/api/v1/media/{missing}")
    assert (response.status_code, response.content) == (404, b"")
    response = await server.http.get("/api/v1/media/not-a-uuid")
    assert (response.status_code, response.content) == (400, b"")
    meta = (await server.http.get("/api/v1/media/metadata/not-a-uuid")).json()
    assert meta["errors"] == [{"errorCode": "InvalidIdFormat"}]
    meta = (await server.http.get(f"/api/v1/media/metadata/{missing}")).json()
    assert meta["errors"] == [{"errorCode": "MediaNotFound"}]
    deleted = (await server.http.delete("/api/v1/media/1234")).json()
    assert deleted["errors"] == [{"errorCode": "InvalidIdFormat"}]


async def test_upload_without_file_field_is_internal_error(server: Server) -> None:
    codes = await server.codes("/api/v1/media", files={"other": ("x", b"x", "text/plain")})
    assert codes == ["InternalError"]


async def test_upload_needs_multipart(server: Server) -> None:
    assert await server.codes("/api/v1/media", {"file": "x"}) == ["invalid Content-Type"]
    assert await server.codes("/api/v1/media", content=b"x",
                              headers={"Content-Type": "multipart/form-data"}) == ["InternalError"]


async def test_truncated_multipart_is_internal_error(server: Server) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc'
    codes = await server.codes("/api/v1/media", content=body,
                               headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert codes == ["InternalError"]


async def test_oversize_upload_is_refused_and_nothing_is_kept(server: Server) -> None:
    # The bodies are not async generators: the server answers before reading them all, and
    # the client gives up on the rest (see test_bad_input.Chunks).
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n' \
           b"Content-Type: image/png\r\n\r\n"
    whole = part + b"x" * (MAX_UPLOAD + 1) + b"\r\n--b--\r\n"
    url = httpx.URL(f"{server.url}/api/v1/media")

    async def codes_of(chunks: list[bytes], headers: dict[str, str]) -> list[str]:
        request = httpx.Request("POST", url, stream=Chunks(chunks), headers={
            "Host": url.netloc.decode(), "Content-Type": "multipart/form-data; boundary=b",
            **headers})
        response = await server.http.send(request)
        assert response.json()["isSuccess"] is False
        return [error["errorCode"] for error in response.json()["errors"]]

    assert await codes_of([whole], {"Content-Length": str(len(whole))}) == ["PayloadTooLarge"]
    # No Content-Length: the bound must hold as bytes arrive.
    assert await codes_of([part, *[b"y" * 1024] * 10], {"Transfer-Encoding": "chunked"}) == [
        "PayloadTooLarge"]
    assert await nothing_stored(server)
    assert await upload(server, b"small")  # the server is still healthy


@pytest.mark.parametrize("kind", ["files", "gridfs"])
async def test_failed_record_removes_the_bytes(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async with a_home_of_bytes(kind, tmp_path, request) as home:
        store = FaultyStore(MemoryStore())  # its media insert fails, as a lost database's would
        store.fail("add_media")
        library = MediaLibrary(store, home)
        with pytest.raises(StoreFailure):
            await library.add(Upload("a.png", "image/png", io.BytesIO(b"bytes" * 100_000)))
        assert stored_ids(home) == []
