"""Reading a JSON request body and its fields, leniently typed as the older backend was.

A field of the wrong JSON type reads as missing (`"name": 5` is `NameIsEmpty`), so a client
mistake always gets a validation code, never a server error. So does a value no store or wire
can carry (API.md): text with a lone surrogate (`"\\ud800"`), a number that is not a finite
double (`1e999`, `10**400`).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from quart import Quart, Response, g, request

from vpiska.domain import Coordinates, is_id, is_text
from vpiska.errors import DomainError, ErrorCode

log = logging.getLogger(__name__)

JSON_TYPES = ("application/json",)


async def json_object(max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object, read at most `max_bytes` far."""
    if request.mimetype not in JSON_TYPES:
        raise DomainError(ErrorCode.INVALID_CONTENT_TYPE)
    raw = await read_bounded(max_bytes)
    body = parse_json(raw, request.path)
    g.json_body = body  # for LOGGING_TRACE_REQUESTS (vpiska/http/tracing.py)
    return as_object(body, request.path)


def parse_json(raw: bytes, path: str) -> Any:
    """A request body's JSON value; InternalError (logged) if it is not JSON."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        log.info("request body is not JSON", extra={"path": path, "cause": str(exc)})
        raise DomainError(ErrorCode.INTERNAL_ERROR) from None


def as_object(body: Any, path: str) -> dict[str, Any]:
    """A parsed request body as a JSON object; InternalError (logged) if it is none."""
    if not isinstance(body, dict):
        log.info("request body is not a JSON object", extra={"path": path})
        raise DomainError(ErrorCode.INTERNAL_ERROR)
    return body


def parsed_json_body() -> Any:
    """The request's body as `json_object` parsed it; None if it was not read or not JSON."""
    return g.get("json_body")


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")  # Python accepts NaN and Infinity; JSON does not


async def read_bounded(max_bytes: int) -> bytes:
    """The whole body, refusing it (PayloadTooLarge) as soon as it passes `max_bytes`, whether
    Content-Length announced it or chunked encoding only revealed it on the way."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise DomainError(ErrorCode.PAYLOAD_TOO_LARGE)
    data = bytearray()
    async for chunk in request.body:
        data += chunk
        if len(data) > max_bytes:
            raise DomainError(ErrorCode.PAYLOAD_TOO_LARGE)
    mark_body_read()
    return bytes(data)


def mark_body_read() -> None:
    g.body_read = True


def close_if_body_unread(app: Quart) -> None:
    """Answer with `Connection: close` when a request body was left (partly) unread.

    A refusal (unauthorized, oversize, wrong type) is sent before the body is consumed; on a
    kept-alive connection the unread rest would sit in hypercorn's bounded queue and stall the
    next request on that connection, so the connection is closed instead.
    """

    @app.after_request
    async def close_connection(response: Response) -> Response:
        has_body = request.content_length or "chunked" in request.headers.get(
            "Transfer-Encoding", "").lower()
        if has_body and not g.get("body_read", False):
            response.headers["Connection"] = "close"
        return response


def text(body: dict[str, Any], key: str) -> str:
    """The field as text; "" (the field's empty code) for anything else."""
    value = body.get(key)
    return value if isinstance(value, str) and is_text(value) else ""


def number(body: dict[str, Any], key: str) -> float | None:
    """The field as a finite double; None (the field's empty code) for anything else."""
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        as_float = float(value)
    except OverflowError:  # an integer beyond any double
        return None
    return as_float if math.isfinite(as_float) else None


def coordinates(body: dict[str, Any], key: str = "coordinates") -> Coordinates | None:
    value = body.get(key)
    if not isinstance(value, dict):
        return None
    x, y = number(value, "x"), number(value, "y")
    return None if x is None or y is None else Coordinates(x, y)


def id_codes(value: str) -> list[ErrorCode]:
    """The validation codes of one id field: none, IdIsEmpty or InvalidIdFormat."""
    if not value:
        return [ErrorCode.ID_IS_EMPTY]
    return [] if is_id(value) else [ErrorCode.INVALID_ID_FORMAT]


def require(*checks: tuple[bool, ErrorCode] | list[ErrorCode]) -> None:
    """Raise every failing code, in the order given: `(failed, code)` pairs or code lists."""
    codes: list[ErrorCode] = []
    for check in checks:
        if isinstance(check, list):
            codes += check
        elif check[0]:
            codes.append(check[1])
    if codes:
        raise DomainError(*codes)
