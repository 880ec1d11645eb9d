"""The hottest JSON endpoints served as plain ASGI in front of Quart: `events/get` and
`events/range`, and the sign-in endpoints (`users/login`, `users/create`), whose refusals a
password guesser makes by the thousand.

Quart's request machinery (a request context, a second task per request, request and response
objects, six hooks) cost more than the server under it: an `events/get` took 3.5 times the CPU
of a raw ASGI app answering a fixed body. Here a POST to one of these paths is read, answered
and accounted for in the request's own task, with the very behaviour the Quart route has (and
the route stays registered and documented; it is what serves them without this layer):

- the request id (`X-Request-Id` kept if acceptable, else a new one; echoed; every log line of
  the request carries it), the request counted and timed under its route template;
- `Content-Type` must be application/json and the body at most MAX_JSON_BYTES, or the answer is
  the envelope of `invalid Content-Type` / `PayloadTooLarge`, with `Connection: close` when the
  body was left unread; a body that is not a JSON object is an InternalError envelope;
- a refusal (DomainError) is its codes' envelope (with `Retry-After` for TooManyRequests),
  any other exception an InternalError one, logged as Quart's error handlers log them
  (vpiska/http/errors.py);
- with LOGGING_TRACE_REQUESTS, the same two trace lines (vpiska/http/tracing.py).

A client that goes away before its body has arrived gets no answer, as under Quart.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from werkzeug.datastructures import MultiDict

from vpiska import metrics
from vpiska.errors import DomainError, ErrorCode, TooManyRequests
from vpiska.http.body import JSON_TYPES, as_object, parse_json
from vpiska.http.envelope import failure_body
from vpiska.http.request_id import choose
from vpiska.http.tracing import HIDDEN, redact, redact_query
from vpiska.logs import request_id

log = logging.getLogger(__name__)
errors_log = logging.getLogger("vpiska.http.errors")
trace_log = logging.getLogger("vpiska.http.tracing")

Scope = dict[str, Any]
# What a handler reads of its request's ASGI scope (who asks: its peer and headers).
RequestScope = Mapping[str, Any]
# A request's JSON object and its scope → the text of its success envelope; refusals raise
# DomainError.
JsonHandler = Callable[[dict[str, Any], RequestScope], Awaitable[str]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class JsonRoutes:
    """POST endpoints of `routes` (by path) served here; every other scope goes to `fallback`."""

    def __init__(self, fallback: Callable[[Scope, Receive, Send], Awaitable[None]],
                 routes: dict[str, JsonHandler], *, max_json_bytes: int, trace: bool) -> None:
        self._fallback = fallback
        self._routes = {path: _Route(path, handler, max_json_bytes, trace)
                        for path, handler in routes.items()}

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself: nothing of this layer stays in memory while a WebSocket lives.
        route = (self._routes.get(scope["path"])
                 if scope["type"] == "http" and scope["method"] == "POST" else None)
        if route is None:
            return self._fallback(scope, receive, send)
        return route.serve(scope, receive, send)


class _Route:
    def __init__(self, path: str, handler: JsonHandler, max_json_bytes: int,
                 trace: bool) -> None:
        self._path = path
        self._handler = handler
        self._max_bytes = max_json_bytes
        self._trace = trace
        # The route's metric series, made at its first request (as under Quart).
        self._counted: Any = None
        self._timed: Any = None

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        offered_id = content_type = ""
        length: int | None = None
        transfer_encoding = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                offered_id = offered_id or value.decode("latin-1")
            elif name == b"content-type":
                content_type = content_type or value.decode("latin-1")
            elif name == b"content-length":
                length = int(value)  # h11 let through only digits, and one length
            elif name == b"transfer-encoding":
                transfer_encoding = transfer_encoding or value.decode("latin-1")
        serving = choose(offered_id)
        request_id.set(serving)
        mimetype = content_type.partition(";")[0].strip().lower()
        body: Any = None
        read = False
        retry_after: int | None = None
        try:
            if mimetype not in JSON_TYPES:
                raise DomainError(ErrorCode.INVALID_CONTENT_TYPE)
            if length is not None and length > self._max_bytes:
                raise DomainError(ErrorCode.PAYLOAD_TOO_LARGE)
            raw = await self._read(receive)
            if raw is None:
                return  # the client went away before its body arrived
            read = True
            body = parse_json(raw, self._path)
            answer = await self._handler(as_object(body, self._path), scope)
        except DomainError as refusal:
            errors_log.debug("request refused", extra={"method": "POST", "path": self._path,
                                                       "codes": list(refusal.codes)})
            answer = failure_body(*refusal.codes)
            if isinstance(refusal, TooManyRequests):
                retry_after = max(1, math.ceil(refusal.retry_after))
        except Exception as error:
            errors_log.error("request failed", exc_info=error,
                             extra={"method": "POST", "path": self._path})
            answer = failure_body(ErrorCode.INTERNAL_ERROR)
        data = answer.encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(data)).encode())]
        if (length or "chunked" in transfer_encoding.lower()) and not read:  # see body.py
            headers.append((b"connection", b"close"))
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        headers.append((b"x-request-id", serving.encode()))
        self._account(started)
        if self._trace:
            self._trace_lines(scope, mimetype, bool(length or transfer_encoding), body, answer,
                              started)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body; PayloadTooLarge as soon as it passes the bound (chunked encoding
        reveals a size only on the way); None if the client went away first."""
        data = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            piece: bytes = message.get("body", b"")
            data += piece
            if len(data) > self._max_bytes:
                raise DomainError(ErrorCode.PAYLOAD_TOO_LARGE)
            if not message.get("more_body", False):
                return data

    def _account(self, started: float) -> None:
        if self._counted is None:
            self._counted = metrics.HTTP_REQUESTS.labels(self._path, "POST", "200")
            self._timed = metrics.HTTP_DURATION.labels(self._path, "POST")
        self._counted.inc()
        self._timed.observe(time.perf_counter() - started)

    def _trace_lines(self, scope: Scope, mimetype: str, has_body: bool, body: Any, answer: str,
                     started: float) -> None:
        query = MultiDict(parse_qsl(scope["query_string"].decode("latin-1"),
                                    keep_blank_values=True))
        shown = (redact(body) if body is not None
                 else HIDDEN if has_body else None)
        trace_log.info("http request", extra={
            "method": "POST", "path": self._path, "query": redact_query(query),
            "content_type": mimetype or None, "body": shown})
        trace_log.info("http response", extra={
            "status": 200, "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "content_type": "application/json", "body": redact(json.loads(answer))})
