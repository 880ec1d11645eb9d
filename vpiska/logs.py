"""Structured logs: one JSON object per line on stdout, so operators can grep and ship them.

Every record carries time, level, logger and event (the message), then the id of the request
being served when it was logged (`request_id`, see vpiska/http/request_id.py), so one request's
lines can be picked out of a busy server's; fields passed with `extra={...}` follow as they
are. Secrets are kept out at the source: no call site logs a password, a token or file bytes.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# The request or WebSocket being served by the current task. Each connection's app task runs in a
# context of its own, so a value set while serving one request is never seen by another.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Characters json.dumps leaves raw (ensure_ascii=False) that some readers take for a line break
# (Python's str.splitlines, JavaScript): escaped, so one event is one line for any reader.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        serving = request_id.get()
        if serving is not None:
            line["request_id"] = serving
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        text = json.dumps(line, ensure_ascii=False, default=str)
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate from a client: escaped, not a logging error
            text = json.dumps(line, default=str)
        return text.translate(_LINE_BREAKS)


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
