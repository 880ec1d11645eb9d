"""The node's line to every other node: one Redis subscription for all its channels.

Redis pub/sub delivers at most once: a message published while a subscriber's connection is
down is gone, and coredis reconnects and subscribes again on its own, silently. Peers' users
found rooms that went quiet that way, with no error. So the bus tells each channel's listener
when its subscription was renewed (`on_renewed`): whatever was published in between may be
lost, and the listener checks (the event frames carry sequence numbers; see gateway.py).

Listeners are plain functions called as each message is read, one at a time in arrival
order; they must not block (they queue work for tasks of their own). They are coredis' own
channel handlers, so a message is not handed on to one more task first: on a node busy with
HTTP every hand-off waits about a millisecond for its turn. (A subscription coredis renews by
itself after a lost connection forgets its handler; its messages then reach the listener
through the bus's task, as they all did before.)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import anyio
import coredis
import trio
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import RedisError
from coredis.response.types import PubSubMessage
from coredis.retry import ExponentialBackoffRetryPolicy

from vpiska.cluster import redis

log = logging.getLogger(__name__)

# How soon a subscription notices a dead connection (it pings when idle this long), and the
# longest pause between its attempts to reconnect: both well inside a lease TTL.
IDLE_PING_SECONDS = 1.0
MAX_RECONNECT_DELAY_SECONDS = 0.5


@dataclasses.dataclass
class Listener:
    on_message: Callable[[bytes], None]
    on_renewed: Callable[[], None]
    confirmed: bool = False  # Redis has confirmed the subscription at least once


class Bus:
    """Resource handling: `run` owns the subscription connection and returns only when
    cancelled; `publish` uses the node's command client, which the caller owns."""

    def __init__(self, url: str, client: coredis.Redis[bytes]) -> None:
        self._url = url
        self._client = client
        self._listeners: dict[str, Listener] = {}
        self._pubsub: coredis.patterns.pubsub.PubSub[bytes] | None = None
        self._ready = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled. A session that ends in an error (coredis retries lost
        connections itself; anything else) is logged and opened again, its channels renewed."""
        while True:
            try:
                await self._session(task_status)
            except* (RedisError, OSError, anyio.ClosedResourceError,
                     anyio.BrokenResourceError) as failed:
                log.warning("subscription failed; opening it again",
                            extra={"cause": repr(failed.exceptions[0])})
            task_status = trio.TASK_STATUS_IGNORED
            for listener in self._listeners.values():
                if listener.confirmed:
                    listener.confirmed = False
                    listener.on_renewed()
            await trio.sleep(MAX_RECONNECT_DELAY_SECONDS)

    async def _session(self, task_status: trio.TaskStatus[None]) -> None:
        retry = ExponentialBackoffRetryPolicy(
            (RedisConnectionError, TimeoutError), retries=None, base_delay=0.05,
            max_delay=MAX_RECONNECT_DELAY_SECONDS, jitter=True)
        async with redis.client_for(self._url) as subscriber, subscriber.pubsub(
            retry_policy=retry, max_idle_seconds=IDLE_PING_SECONDS
        ) as pubsub:
            self._pubsub = pubsub
            if self._listeners:
                await pubsub.subscribe(**{channel: self._handler(listener)
                                          for channel, listener in self._listeners.items()})
            self._ready.set()
            task_status.started()
            while True:
                message = await pubsub.get_message()
                if message is not None:
                    self._dispatch(message)

    def _dispatch(self, message: PubSubMessage) -> None:
        channel = message.get("channel")
        if not isinstance(channel, bytes):
            return
        listener = self._listeners.get(channel.decode())
        if listener is None:
            return
        kind = message.get("type")
        if kind == "message":
            data = message.get("data")
            if isinstance(data, bytes):
                listener.on_message(data)
        elif kind == "subscribe":
            if listener.confirmed:  # a renewal after a reconnect: messages may be lost
                log.warning("subscription renewed after a lost connection",
                            extra={"channel": channel.decode()})
                listener.on_renewed()
            listener.confirmed = True

    @staticmethod
    def _handler(listener: Listener) -> Callable[[PubSubMessage], None]:
        def handle(message: PubSubMessage) -> None:
            data = message.get("data")
            if isinstance(data, bytes):
                listener.on_message(data)
        return handle

    async def subscribe(self, channel: str, on_message: Callable[[bytes], None],
                        on_renewed: Callable[[], None]) -> None:
        """Listen on `channel`; returns once Redis has confirmed it (or it is queued for the
        next connection, when Redis is down: then `on_renewed` will be called once it is)."""
        listener = self._listeners[channel] = Listener(on_message, on_renewed)
        await self._ready.wait()
        assert self._pubsub is not None
        handler = self._handler(listener)
        try:
            await self._pubsub.subscribe(**{channel: handler})
        except redis.REDIS_ERRORS as error:
            log.warning("subscription deferred: Redis unreachable",
                        extra={"channel": channel, "cause": repr(error)})
            self._pubsub.channels[channel.encode()] = handler  # renewed with the others

    async def unsubscribe(self, channel: str) -> None:
        if self._listeners.pop(channel, None) is None or self._pubsub is None:
            return
        try:
            await self._pubsub.unsubscribe(channel)
        except redis.REDIS_ERRORS:
            self._pubsub.channels.pop(channel.encode(), None)

    async def publish(self, channel: str, data: bytes) -> int:
        """Publish `data`; the number of subscribers it reached (0: nobody listens there).

        Error handling: Redis errors and timeouts escape; callers decide what a message they
        could not send means.
        """
        return await self._client.publish(channel, data)
