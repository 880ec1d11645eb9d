"""How failures become answers: every error is an envelope, none is a traceback to the client.

Older-backend behaviour kept: refusals, a wrong method and oversize bodies are HTTP 200 with an
error envelope (clients read the envelope, not the status). A path no endpoint serves is a 404.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from quart import Quart, has_websocket_context, request, websocket
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from vpiska.errors import DomainError, ErrorCode, TooManyRequests
from vpiska.http.envelope import failure

log = logging.getLogger(__name__)


def install_error_handlers(app: Quart) -> None:
    @app.errorhandler(DomainError)
    async def refused(error: DomainError) -> Any:
        log.debug("request refused", extra=_where() | {"codes": list(error.codes)})
        response = failure(*error.codes)
        if isinstance(error, TooManyRequests):
            response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
        return response

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Any:
        log.info("request rejected", extra=_where() | {"status": error.code})
        if isinstance(error, NotFound):
            return failure(ErrorCode.NOT_FOUND, status=404)
        if isinstance(error, MethodNotAllowed):
            return failure(ErrorCode.INVALID_METHOD)
        if isinstance(error, RequestEntityTooLarge):
            return failure(ErrorCode.PAYLOAD_TOO_LARGE)
        return failure(ErrorCode.INTERNAL_ERROR)

    @app.errorhandler(Exception)
    async def crashed(error: Exception) -> Any:
        log.error("request failed", exc_info=error, extra=_where())
        return failure(ErrorCode.INTERNAL_ERROR)


def _where() -> dict[str, str]:
    if has_websocket_context():
        return {"method": "WEBSOCKET", "path": websocket.path}
    return {"method": request.method, "path": request.path}
