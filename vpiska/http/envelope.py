"""The response envelope every JSON endpoint answers with (key order as API.md shows)."""

from __future__ import annotations

from typing import Any

from quart import Response

from vpiska.errors import ErrorCode
from vpiska.wire import encode


def success(result: Any = None) -> Response:
    return answer(success_body(result))


def success_text(result: str) -> Response:
    """`success` for a result that is JSON text already."""
    return answer(success_text_body(result))


def failure(*codes: ErrorCode, status: int = 200) -> Response:
    return answer(failure_body(*codes), status)


def answer(body: str, status: int = 200) -> Response:
    """An envelope's text as Quart's response."""
    return Response(body, status=status, content_type="application/json")


def success_body(result: Any = None) -> str:
    return encode({"isSuccess": True, "errors": None, "result": result})


def success_text_body(result: str) -> str:
    """`success_body` for a result that is JSON text already."""
    return f'{{"isSuccess":true,"errors":null,"result":{result}}}'


def failure_body(*codes: ErrorCode) -> str:
    errors = [{"errorCode": str(code)} for code in codes]
    return encode({"isSuccess": False, "errors": errors, "result": None})
