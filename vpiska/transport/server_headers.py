"""The headers hypercorn adds to every response (Date, Server, …), made once a second.

`config.response_headers("h11")` formats the date on every call; the Date header counts whole
seconds, so one list a second serves every response of that second.
"""

from __future__ import annotations

import time

from hypercorn.config import Config as HypercornConfig

_date_headers: dict[int, tuple[int, list[tuple[bytes, bytes]]]] = {}


def server_headers(config: HypercornConfig) -> list[tuple[bytes, bytes]]:
    """`config.response_headers("h11")`, made at most once a second per configuration."""
    now = int(time.time())
    cached = _date_headers.get(id(config))
    if cached is None or cached[0] != now:
        cached = (now, config.response_headers("h11"))
        _date_headers[id(config)] = cached
    return cached[1]
