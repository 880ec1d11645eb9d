"""One warning per outage, not one per failed call.

While Redis is away every frame, request and heartbeat fails, many times a second; the log
should say when it began, what it was, and when it ended, and how much it cost.
"""

from __future__ import annotations

import logging
from typing import Any


class Trouble:
    """A kind of failure that is either going on or not."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._failures = 0

    def failed(self, cause: BaseException, **extra: Any) -> None:
        """Log the first failure of an outage as a warning; count the rest."""
        self._failures += 1
        if self._failures == 1:
            self._log.warning(self._what, extra={"cause": repr(cause), **extra})

    def succeeded(self) -> None:
        """The call worked: if an outage was going on, log that it ended and what it cost."""
        if self._failures:
            self._log.info(f"{self._what}: over", extra={"failures": self._failures})
            self._failures = 0
