"""Requests between nodes: ask a node something over its channel and wait for its answer.

A request goes to `vpiska:node:{node}` with an id and the asker's node id; the answer comes
back on the asker's own channel. PUBLISH says how many subscribers got the message, so a
request to a node that is not listening (dead, or reconnecting to Redis) fails at once
(`Unreachable`) instead of waiting out its deadline.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import trio
from coredis.exceptions import RedisError

from vpiska.cluster import redis
from vpiska.cluster.bus import Bus
from vpiska.cluster.protocol import Notice, Reply, Request, encode

log = logging.getLogger(__name__)


class Unreachable(Exception):
    """The node did not get the message (it is gone, or Redis is unreachable)."""


class NoAnswer(Exception):
    """The node got the request but did not answer within the deadline."""


class Rpc:
    def __init__(self, bus: Bus, node_id: str) -> None:
        self._bus = bus
        self._node_id = node_id
        self._ids = itertools.count(1)
        self._waiting: dict[int, trio.MemorySendChannel[Reply]] = {}

    async def ask(self, node: str, op: str, event_id: str, args: dict[str, Any],
                  timeout: float) -> Reply:  # noqa: ASYNC109 (NoAnswer names the deadline)
        """Send a request to `node` and return its reply.

        Error handling: Unreachable if `node` did not get it; NoAnswer past `timeout`.
        """
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[Reply](1)
        self._waiting[request_id] = send
        try:
            with trio.move_on_after(timeout):
                await self._publish(node, encode(Request(request_id, self._node_id, op,
                                                         event_id, args)))
                return await receive.receive()
            raise NoAnswer(f"{op} {event_id} to {node}: no answer in {timeout} s")
        finally:
            del self._waiting[request_id]

    async def tell(self, node: str, op: str, event_id: str, args: dict[str, Any]) -> None:
        """Send a notice that needs no answer. Error handling: Unreachable."""
        await self._publish(node, encode(Notice(op, event_id, args)))

    async def answer(self, request: Request, reply: Reply) -> None:
        """Send `reply` to the node that asked; a lost answer is the asker's timeout."""
        try:
            await self._publish(request.reply_to, encode(reply))
        except Unreachable:
            log.info("answer not delivered", extra={"op": request.op, "to": request.reply_to})

    def received(self, reply: Reply) -> None:
        """A reply arrived on this node's channel (called by the bus listener)."""
        waiting = self._waiting.get(reply.id)
        if waiting is not None:
            waiting.send_nowait(reply)  # capacity 1, one reply per id: never blocks

    async def _publish(self, node: str, data: bytes) -> None:
        try:
            receivers = await self._bus.publish(redis.node_channel(node), data)
        except (RedisError, TimeoutError) as error:
            raise Unreachable(f"Redis: {error!r}") from error
        if receivers == 0:
            raise Unreachable(f"node {node} is not listening")
