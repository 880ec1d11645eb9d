"""The sign-in limits' counters shared by every node through Redis (vpiska/signin_limits.py).

Keys, each with a TTL so that Redis holds only what still limits something:

- `vpiska:signin:address:{address}`: the address's GCRA arrival time (ms, Redis' clock),
  expiring when its burst is whole again (at most a minute);
- `vpiska:signin:phone:{phone}`: a sorted set of the phone's claims (at most
  WRONG_PASSWORDS), scored by when each was taken, expiring 15 minutes after the last.

Each check and its count is one Lua script, so two nodes can never both take the last place.
Times come from Redis' clock: nodes need not agree on time.

If Redis does not answer (down, partitioned, slower than REDIS_WAIT_SECONDS), a login must
neither fail nor hang: the node counts on its own (LocalCounters) for RETRY_SECONDS, then asks
Redis again, and logs the outage once, with how many calls it cost when it ends. Meanwhile
the limits hold per node, not cluster-wide: a guesser spread over n nodes gets up to n times
the per-phone allowance while it lasts. A place claimed in Redis just before it went silent
is not given back there: it counts as a wrong password until it expires (stricter, never
looser).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import coredis
import trio

from vpiska.cluster import redis
from vpiska.cluster.trouble import Trouble
from vpiska.signin_limits import WRONG_PASSWORD_WINDOW_SECONDS, WRONG_PASSWORDS, LocalCounters

log = logging.getLogger(__name__)

# The longest a sign-in waits for Redis before the node counts on its own; Redis answers in
# well under a millisecond when it is well.
REDIS_WAIT_SECONDS = 0.5
# How long the node counts on its own after Redis failed it, before asking again.
RETRY_SECONDS = 5.0


def address_key(address: str) -> str:
    return f"{redis.PREFIX}signin:address:{address}"


def phone_key(phone: str) -> str:
    return f"{redis.PREFIX}signin:phone:{phone}"


# KEYS[1] the address's arrival time; ARGV[1] ms between attempts, ARGV[2] the burst in ms
# (the interval times the rate, less one interval). 0 when admitted and counted, else the ms
# to wait.
TAKE_ATTEMPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local arrival = tonumber(redis.call('GET', KEYS[1]) or '0')
if arrival < now then arrival = now end
local wait = arrival - tonumber(ARGV[2]) - now
if wait > 0 then return wait end
local next_arrival = arrival + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', next_arrival), 'PX', next_arrival - now)
return 0
"""

# KEYS[1] the phone's claims; ARGV[1] the window in ms, ARGV[2] the places, ARGV[3] the claim.
# 0 when the claim took a place, else the ms until the oldest place is free.
CLAIM_GUESS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""

_WINDOW_MS = WRONG_PASSWORD_WINDOW_SECONDS * 1000


class RedisCounters:
    """`SigninCounters` in Redis, with `local` standing in while Redis does not answer.

    Error handling: nothing escapes; a Redis failure is logged once per outage.
    """

    def __init__(self, client: coredis.Redis[bytes], local: LocalCounters,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._local = local
        self._clock = clock
        self._take_attempt = client.register_script(TAKE_ATTEMPT)
        self._claim_guess = client.register_script(CLAIM_GUESS)
        self._trouble = Trouble(log, "sign-in limits: Redis unreachable; this node counts alone")
        self._alone_until = -math.inf

    async def take_attempt(self, address: str, per_minute: int) -> float:
        interval = max(1, 60_000 // per_minute)  # ms; Redis takes no expiry of 0
        waited = await self._shared(lambda: self._take_attempt(
            keys=[address_key(address)], args=[interval, interval * (per_minute - 1)]))
        if waited is None:
            return await self._local.take_attempt(address, per_minute)
        return int(waited) / 1000

    async def claim_guess(self, phone: str, claim: str) -> float:
        waited = await self._shared(lambda: self._claim_guess(
            keys=[phone_key(phone)], args=[_WINDOW_MS, WRONG_PASSWORDS, claim]))
        if waited is None:
            return await self._local.claim_guess(phone, claim)
        return int(waited) / 1000

    async def release_guess(self, phone: str, claim: str) -> None:
        # Both: the claim was taken in one of them, and giving back one never taken is nothing.
        await self._local.release_guess(phone, claim)
        await self._shared(lambda: self._client.zrem(phone_key(phone), [claim]))

    async def _shared(self, command: Callable[[], Awaitable[Any]]) -> Any | None:
        """The command's answer, or None if Redis is not to be asked or did not answer."""
        if self._clock() < self._alone_until:
            return None
        failure: BaseException | None = None
        with trio.move_on_after(REDIS_WAIT_SECONDS):
            try:
                answer = await command()
            except redis.REDIS_ERRORS as failed:
                failure = failed
            else:
                self._trouble.succeeded()
                return answer
        self._trouble.failed(failure or TimeoutError(f"no answer within {REDIS_WAIT_SECONDS} s"))
        self._alone_until = self._clock() + RETRY_SECONDS
        return None
