"""HTTP reference: `POST /api/v1/events/get` as a raw ASGI app on hypercorn's trio worker.

The app answers vpiska's route with vpiska's envelope for the event vpiska answered in the same
run (`EVENT_ANSWER_FILE`: vpiska's own answer bytes): it reads the body, parses the JSON, looks
the event id up in a dict and encodes the envelope per request, as any JSON endpoint does. No
routing framework, no validation, no store: the floor of an ASGI server on trio.

Usage: PORT=… EVENT_ANSWER_FILE=… python http_asgi.py stock|adapter
- `stock`: hypercorn 0.18 as installed;
- `adapter`: the same, after vpiska's `vpiska.transport.install(enabled=True)` (its TCP server
  and WebSocket stream classes, and its ServerConfig with vpiska's body deadline).
Both get vpiska's read timeout (40 s) and no access log.
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

PATH = "/api/v1/events/get"
encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def load_events() -> dict[str, Any]:
    with open(os.environ["EVENT_ANSWER_FILE"], "rb") as answer:
        event = json.load(answer)["result"]
    return {event["id"]: event}


EVENTS = load_events()
NOT_FOUND = {"isSuccess": False, "errors": [{"errorCode": "EventNotFound"}], "result": None}


def answer_for(body: bytes) -> bytes:
    try:
        request = json.loads(body)
    except ValueError:
        request = None
    event_id = request.get("eventId") if isinstance(request, dict) else None
    event = EVENTS.get(event_id) if isinstance(event_id, str) else None
    if event is None:
        return encode(NOT_FOUND).encode()
    return encode({"isSuccess": True, "errors": None, "result": event}).encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] != PATH or scope["method"] != "POST":
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    data = answer_for(body)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def main() -> None:
    variant = sys.argv[1] if len(sys.argv) > 1 else "stock"
    config: Config
    if variant == "adapter":
        from vpiska import transport

        if not transport.install(enabled=True):
            raise SystemExit("vpiska's hypercorn adapter refused this hypercorn version")
        config = transport.ServerConfig()
        config.body_timeout = 30.0
    elif variant == "stock":
        config = Config()
    else:
        raise SystemExit(f"unknown variant {variant!r}: stock or adapter")
    config.bind = [f"127.0.0.1:{os.environ['PORT']}"]
    config.accesslog = None
    config.read_timeout = 40  # vpiska's: two WS_PING_SECONDS
    trio.run(partial(serve, app, config))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
