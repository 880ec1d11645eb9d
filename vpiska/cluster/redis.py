"""Redis as the cluster uses it: key names, and the scripts that make each step atomic.

Everything the nodes share lives under one prefix:

- `vpiska:nodes`: a sorted set of live node ids, scored by when their heartbeat expires
  (Redis' own clock, so nodes need not agree on time);
- `vpiska:lease:{event}`: "{node} {epoch}", with a TTL: who owns the event's actor;
- `vpiska:epoch:{event}`: the event's fencing counter, bumped on every acquisition;
- `vpiska:view:{event}` and `vpiska:chat:{event}`: the event as its owner's actor shows it
  (vpiska/cluster/views.py) and the chat lines it holds, one list item each;
- channels `vpiska:node:{node}` (requests and replies for one node), `vpiska:event:{event}`
  (the event's frames, published once by its owner) and `vpiska:cluster` (notices to all).

Leases and heartbeats are Lua scripts, so a check and its write can never interleave with
another node's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import coredis
from coredis.connection import TCPLocation
from coredis.exceptions import RedisError

from vpiska.config import sentinel_of

log = logging.getLogger(__name__)

PREFIX = "vpiska:"
NODES = PREFIX + "nodes"
CLUSTER_CHANNEL = PREFIX + "cluster"

# What a Redis command may raise when Redis is unreachable, slow or goes away mid-call (coredis
# lets anyio's stream errors through on a connection closed under it).
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    RedisError, TimeoutError, OSError, anyio.ClosedResourceError, anyio.BrokenResourceError)

# A command that takes longer than this is a Redis in trouble: the caller hears so, instead of
# waiting on it (a node must notice it cannot renew its leases long before they expire).
COMMAND_TIMEOUT_SECONDS = 1.0


def lease_key(event_id: str) -> str:
    return f"{PREFIX}lease:{event_id}"


def epoch_key(event_id: str) -> str:
    return f"{PREFIX}epoch:{event_id}"


def view_key(event_id: str) -> str:
    return f"{PREFIX}view:{event_id}"


def chat_key(event_id: str) -> str:
    return f"{PREFIX}chat:{event_id}"


def node_channel(node_id: str) -> str:
    return f"{PREFIX}node:{node_id}"


def event_channel(event_id: str) -> str:
    return f"{PREFIX}event:{event_id}"


# KEYS[1] lease, KEYS[2] epoch counter; ARGV[1] node id, ARGV[2] TTL in ms.
# The new epoch if the lease was free and is now ours; nil if someone holds it. The counter
# may go back (a Redis restarted without its data, a replica promoted before it had the last
# INCR) and hand out an epoch again: the store refuses a second claim of an epoch, and the
# refused node raises the counter above it (RAISE_EPOCH). '%d': Lua would print a large
# number as 1.7e+15.
ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return nil end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. string.format('%d', epoch), 'PX', ARGV[2])
return epoch
"""

# KEYS: leases; ARGV[1] TTL in ms; ARGV[i + 1] the value KEYS[i] must hold ("node epoch").
# Extends every lease still ours; returns the 1-based positions of those that are not.
RENEW = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
  else
    table.insert(lost, i)
  end
end
return lost
"""

# KEYS[1] epoch counter; ARGV[1] an epoch the store has claimed. Raises the counter to it, so
# the next INCR is above it: after a Redis restart (no persistence) or a failover that lost
# writes, the counters are behind the store's epochs.
RAISE_EPOCH = """
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""

# KEYS[1] lease; ARGV[1] the value it must hold. Frees it only if it is still ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] epoch counter, KEYS[2] view, KEYS[3] chat; ARGV[1] the writer's epoch, ARGV[2] the
# view ('' for a closed event: the mirror is emptied), ARGV[3] how many of the chat lines held
# to keep, ARGV[4..] the lines that follow them. {1} when written; {0, the counter's value} once
# a newer owner has taken the event (the writer is fenced). Keeping a count, not appending,
# makes a write tried again (its answer was lost) the same write.
SHOW_VIEW = """
local claimed = redis.call('GET', KEYS[1])
if claimed ~= ARGV[1] then return {0, claimed or '0'} end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[2], KEYS[3])
  return {1}
end
if ARGV[3] == '0' then
  redis.call('DEL', KEYS[3])
else
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
end
for i = 4, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[3], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('SET', KEYS[2], ARGV[2])
return {1}
"""

# KEYS: lease, view and chat of each event read, three by three. The three of every event, as
# one moment saw them, one after the other.
READ_VIEWS = """
local read = {}
for i = 1, #KEYS, 3 do
  read[#read + 1] = redis.call('GET', KEYS[i]) or false
  read[#read + 1] = redis.call('GET', KEYS[i + 1]) or false
  read[#read + 1] = redis.call('LRANGE', KEYS[i + 2], 0, -1)
end
return read
"""

# KEYS[1] the nodes set; ARGV[1] node id, ARGV[2] TTL in ms, ARGV[3] '1' beat, '0' leave.
# Returns the live nodes after dropping those whose heartbeat has expired.
HEARTBEAT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


class _FollowedPrimary(coredis.SentinelConnectionPool):
    """Sentinel's pool, which says when the primary it connects to has changed: the one
    line a node logs about a failover (its outage is Trouble's "Redis unreachable")."""

    _followed: TCPLocation | None = None

    async def get_primary_location(self) -> TCPLocation:
        location = await super().get_primary_location()
        # Connections made at once all learn of a new primary: the first to say so says it.
        before, self._followed = self._followed, location
        if before is not None and location != before:
            log.warning("Redis failed over: following the new primary", extra={
                "service": self.service_name, "primary": f"{location.host}:{location.port}",
                "was": f"{before.host}:{before.port}"})
        return location


@asynccontextmanager
async def client_for(url: str, limit_seconds: float | None = None, *,
                     tell_failovers: bool = False) -> AsyncIterator[coredis.Redis[bytes]]:
    """An open client of the Redis `url` names (REDIS_URL, vpiska/config.py). `limit_seconds`: how
    long a command, a connection or a wait for a free one in the pool may take (None: no
    limit, for a subscription that blocks on its reads). `tell_failovers`: log when the
    primary changes (one client of a node does, not each).

    A `redis+sentinel://` URL names Sentinels: each new connection asks them which server is
    the service's primary (and checks that it says so: ROLE), so once the Sentinels have
    failed over, the connections that broke with the old primary come back to the new one.
    The Sentinels are always asked within COMMAND_TIMEOUT_SECONDS: one that does not answer
    must not hold every connection.

    Resource handling: the client, its connections and those to the Sentinels are closed on
    exit.
    """
    limits: dict[str, Any] = (
        {} if limit_seconds is None
        else {"stream_timeout": limit_seconds, "connect_timeout": limit_seconds})
    sentinel = sentinel_of(url)
    if sentinel is None:
        client: coredis.Redis[bytes] = coredis.Redis.from_url(
            url, pool_timeout=limit_seconds, **limits)
        async with client:
            yield client
        return
    asking: dict[str, Any] = {"stream_timeout": COMMAND_TIMEOUT_SECONDS,
                              "connect_timeout": COMMAND_TIMEOUT_SECONDS}
    async with coredis.Sentinel(
            [TCPLocation(host, port) for host, port in sentinel.sentinels],
            sentinel_kwargs=asking) as sentinels:
        primary: coredis.Redis[bytes] = sentinels.primary_for(
            sentinel.service, db=sentinel.db, username=sentinel.username,
            password=sentinel.password, timeout=limit_seconds,
            connection_pool_class=(_FollowedPrimary if tell_failovers
                                   else coredis.SentinelConnectionPool),
            **limits)
        async with primary:
            yield primary


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[coredis.Redis[bytes]]:
    """A client for `url` whose commands fail fast when Redis is unreachable (coredis' pool
    would otherwise wait for a free connection without limit: connections stuck on a Redis
    that went away must not hold every later command forever).

    Resource handling: the client and its connections are closed on exit.
    """
    try:
        async with client_for(url, COMMAND_TIMEOUT_SECONDS, tell_failovers=True) as client:
            yield client
    except* (anyio.ClosedResourceError, anyio.BrokenResourceError) as closing:
        # coredis 6 can fail closing a pool whose connection Redis already dropped (or that
        # is closed while being cancelled); the client is gone either way.
        log.info("Redis client closed with an error", extra={"cause": repr(closing)})
