"""HTTP reference: `POST /api/v1/events/get` on Starlette, served by uvicorn.

The same route and answer as http_asgi.py (the envelope of vpiska's own answer for the event,
`EVENT_ANSWER_FILE`), with Starlette's router, `request.json()` and `JSONResponse`: the common
way to write such an endpoint on asyncio. uvicorn as `uvicorn[standard]` installs it: uvloop
and httptools, one process, no access log.

Usage: PORT=… EVENT_ANSWER_FILE=… python http_starlette.py
"""

from __future__ import annotations

import json
import os
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def load_events() -> dict[str, Any]:
    with open(os.environ["EVENT_ANSWER_FILE"], "rb") as answer:
        event = json.load(answer)["result"]
    return {event["id"]: event}


EVENTS = load_events()


class CompactJSON(JSONResponse):
    def render(self, content: Any) -> bytes:  # vpiska's spacing: none
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


async def get_event(request: Request) -> JSONResponse:
    try:
        body = await request.json()
    except ValueError:
        body = None
    event_id = body.get("eventId") if isinstance(body, dict) else None
    event = EVENTS.get(event_id) if isinstance(event_id, str) else None
    if event is None:
        return CompactJSON({"isSuccess": False, "errors": [{"errorCode": "EventNotFound"}],
                            "result": None})
    return CompactJSON({"isSuccess": True, "errors": None, "result": event})


app = Starlette(routes=[Route("/api/v1/events/get", get_event, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning",
                access_log=False)
