"""The media section: downloads of one 1 MiB photo, its bytes in files or in GridFS.

One vpiska pinned to core 0, one wrk of HTTP_CONNECTIONS pinned to core 1 asking
`GET /api/v1/media/{id}` for the same photo, uploaded once before the load. `files`: the
default sqlite store and the bytes under DATA_DIR (what one machine runs). `gridfs`: the bench's
MongoDB (bench/mongodb.py) holding the records and the bytes (`MEDIA_STORE=gridfs`, what nodes
on separate machines run). The ratio is reported without a target: the server behind GridFS here
is SecantusDB, a Python program on the same two cores, not mongod.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
import uuid
from typing import Any

from bench import httpload, mongodb
from bench.scenarios import HTTP_CONNECTIONS, Plan, Row, Step
from bench.seed import Seeds
from bench.servers import running

PHOTO_BYTES = 1024 * 1024
MEDIA_STORES = ("files", "gridfs")


def steps(plan: Plan, seeds: Seeds) -> list[Step]:
    return [_step(store, rep, plan, seeds) for rep in range(plan.repetitions)
            for store in MEDIA_STORES]


def _step(store: str, rep: int, plan: Plan, seeds: Seeds) -> Step:
    def run() -> Row:
        with contextlib.ExitStack() as stack:
            env: dict[str, str] = {"MEDIA_STORE": store}
            others: dict[str, int] = {}
            if store == "gridfs":
                mongo = stack.enter_context(mongodb.running())
                env |= {"DB_CONNECTION": mongo.url,
                        "DB_NAME": mongodb.seeded_database(mongo, seeds.room_db)}
                others["mongodb"] = mongo.pid
            server = stack.enter_context(running("vpiska", seeds.room_db, env))
            media_id = upload(server.port, os.urandom(PHOTO_BYTES))
            download = httpload.Endpoint("media download (1 MiB)", f"/api/v1/media/{media_id}",
                                         {}, method="GET")
            return httpload.wrk_split([server.port], download, plan.http_seconds,
                                      HTTP_CONNECTIONS, [server.pid], "1", others)
    return Step(f"media download {store} #{rep + 1}",
                {"scenario": "media", "server": store, "rep": rep + 1}, run)


def upload(port: int, data: bytes) -> str:
    """POST /api/v1/media with `data` as an image/jpeg file; the new media's id."""
    boundary = uuid.uuid4().hex
    body = b"".join([
        f"--{boundary}\r\n".encode(),
        b'Content-Disposition: form-data; name="file"; filename="photo.jpg"\r\n',
        b"Content-Type: image/jpeg\r\n\r\n", data, f"\r\n--{boundary}--\r\n".encode()])
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/media", body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        envelope: dict[str, Any] = json.loads(answer.read())
    if not envelope.get("isSuccess"):
        raise RuntimeError(f"the upload failed: {envelope}")
    return str(envelope["result"])
