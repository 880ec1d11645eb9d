"""The response envelope every JSON endpoint answers with (key order as API.md shows)."""

from __future__ import annotations

import json
from typing import Any

from quart import Response

from vpiska.errors import ErrorCode


def encode(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def success(result: Any = None) -> Response:
    return _json({"isSuccess": True, "errors": None, "result": result}, 200)


def failure(*codes: ErrorCode, status: int = 200) -> Response:
    errors = [{"errorCode": str(code)} for code in codes]
    return _json({"isSuccess": False, "errors": errors, "result": None}, status)


def _json(body: dict[str, Any], status: int) -> Response:
    return Response(encode(body), status=status, content_type="application/json")
