"""A node's short tasks fail alone.

The node runs many small tasks for other nodes and for its gateways (answer a request, catch
a gateway up, release a lease). A bug or an unexpected error in one of them must end that
task, logged with its traceback, not the node's nursery and with it every room and socket of
the node: the same rule as for one connection or one command.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


async def contained(what: str, fn: Callable[..., Awaitable[Any]], *args: Any,
                    on_failure: Callable[[], None] | None = None) -> None:
    """Run `fn(*args)`; an Exception is logged and, if given, `on_failure` is called."""
    try:
        await fn(*args)
    except Exception:
        log.exception("cluster task failed", extra={"task": what})
        if on_failure is not None:
            on_failure()
