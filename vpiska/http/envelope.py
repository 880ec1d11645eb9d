"""The response envelope every JSON endpoint answers with (key order as API.md shows)."""

from __future__ import annotations

from typing import Any

from quart import Response

from vpiska.errors import ErrorCode
from vpiska.wire import encode


def success(result: Any = None) -> Response:
    return _json({"isSuccess": True, "errors": None, "result": result}, 200)


def success_text(result: str) -> Response:
    """`success` for a result that is JSON text already."""
    body = f'{{"isSuccess":true,"errors":null,"result":{result}}}'
    return Response(body, status=200, content_type="application/json")


def failure(*codes: ErrorCode, status: int = 200) -> Response:
    errors = [{"errorCode": str(code)} for code in codes]
    return _json({"isSuccess": False, "errors": errors, "result": None}, status)


def _json(body: dict[str, Any], status: int) -> Response:
    return Response(encode(body), status=status, content_type="application/json")
