"""Chat flood control for one WebSocket: a token bucket, and a line it draws for abuse.

Policy (docs/protocol.md, "Chat limits"): a member may send `rate` lines per second with bursts of
`burst`. A line over the rate, or longer than MAX_CHAT_CHARS, is dropped silently. A member
whose dropped lines reach `burst` within ABUSE_WINDOW seconds is flooding, not typing fast,
and is disconnected with close code 4009.
"""

from __future__ import annotations

import collections

import trio

ABUSE_WINDOW = 10.0


class ChatFlood:
    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._last = trio.current_time()
        self._drops: collections.deque[float] = collections.deque(maxlen=burst)

    def admit(self) -> bool:
        """Take a token for one line; False (and a recorded drop) if there is none."""
        now = trio.current_time()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.drop()
        return False

    def drop(self) -> None:
        self._drops.append(trio.current_time())

    @property
    def abusive(self) -> bool:
        return (len(self._drops) == self._burst
                and self._drops[-1] - self._drops[0] <= ABUSE_WINDOW)
