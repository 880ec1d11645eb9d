"""Requests between nodes: ask a node something over its channel and wait for its answer.

A request goes to `vpiska:node:{node}` with an id and the asker's node id; the answer comes
back on the asker's own channel. PUBLISH says how many subscribers got the message, so a
request to a node that is not listening (dead, or reconnecting to Redis) fails at once
(`Unreachable`) instead of waiting out its deadline.

Messages to one node are batched: one sender task publishes, per node, everything gathered
for it while its previous PUBLISH was on its way, as one message (the group commit of the
store and of the owner's frames, once more). The receiving side pays per message, not per
byte: coredis hands a subscriber its messages one per turn of the event loop, and on a node
busy serving HTTP a turn is about a millisecond. One request and one answer per message held
a loaded node's channel at ~1,000 messages/s, and its requests queued for tens of ms there
(bench/README.md, "Requests between nodes").
"""

from __future__ import annotations

import dataclasses
import itertools
import logging

import trio

from vpiska.cluster import redis
from vpiska.cluster.bus import Bus
from vpiska.cluster.protocol import (
    Answer,
    BadRequest,
    Notice,
    NoticeOp,
    Request,
    RequestOp,
    encode,
    encode_batch,
)

log = logging.getLogger(__name__)


class Unreachable(Exception):
    """The node did not get the message (it is gone, or Redis is unreachable)."""


class NoAnswer(Exception):
    """The node got the request but did not answer within the deadline."""


# A batch stops growing past this size, and the next one starts: Redis drops a subscriber whose
# unread output passes its pubsub buffer limit (32 MiB by default), and a chat line may be long.
MAX_BATCH_BYTES = 256 * 1024


@dataclasses.dataclass(eq=False)
class _Batch:
    """Messages for one node that go out in one PUBLISH, and what became of it."""

    messages: list[bytes] = dataclasses.field(default_factory=list)
    size: int = 0
    sent: trio.Event = dataclasses.field(default_factory=trio.Event)
    receivers: int = 0
    error: BaseException | None = None


class Rpc:
    """Resource handling: `run` is the sender task and returns only when cancelled, which
    happens with the node's nursery, and so with every task still waiting on a batch."""

    def __init__(self, bus: Bus, node_id: str) -> None:
        self._bus = bus
        self._node_id = node_id
        self._ids = itertools.count(1)
        self._waiting: dict[int, trio.MemorySendChannel[Answer]] = {}
        self._gathering: dict[str, list[_Batch]] = {}  # by node, in the order they go out
        self._wake = trio.Event()

    async def run(self) -> None:
        """The sender: each round publishes, in order, what was gathered during the last."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            gathered, self._gathering = self._gathering, {}
            for node, batches in gathered.items():
                await self._send(node, batches)

    async def ask(self, node: str, op: RequestOp, event_id: str,
                  timeout: float) -> Answer:  # noqa: ASYNC109 (NoAnswer names the deadline)
        """Send a request to `node` and return its answer.

        Error handling: Unreachable if `node` did not get it; NoAnswer past `timeout`.
        """
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[Answer](1)
        self._waiting[request_id] = send
        try:
            with trio.move_on_after(timeout):
                await self._publish(node, encode(Request(request_id, self._node_id, op,
                                                         event_id)))
                return await receive.receive()
            raise NoAnswer(f"{op.op} {event_id} to {node}: no answer in {timeout} s")
        finally:
            del self._waiting[request_id]

    async def tell(self, node: str, op: NoticeOp, event_id: str) -> None:
        """Send a notice that needs no answer. Error handling: Unreachable."""
        await self._publish(node, encode(Notice(op, event_id)))

    async def answer(self, request: Request | BadRequest, answer: Answer) -> None:
        """Send `answer` to the node that asked; a lost answer is the asker's timeout."""
        try:
            await self._publish(request.reply_to, encode(answer))
        except Unreachable:
            op = request.op if isinstance(request, BadRequest) else request.op.op
            log.info("answer not delivered", extra={"op": op, "to": request.reply_to})

    def received(self, answer: Answer) -> None:
        """An answer arrived on this node's channel (called by the bus listener)."""
        waiting = self._waiting.get(answer.id)
        if waiting is not None:
            waiting.send_nowait(answer)  # capacity 1, one answer per id: never blocks

    async def _publish(self, node: str, data: bytes) -> None:
        batches = self._gathering.setdefault(node, [])
        if not batches or batches[-1].size >= MAX_BATCH_BYTES:
            batches.append(_Batch())
            self._wake.set()
        batch = batches[-1]
        batch.messages.append(data)
        batch.size += len(data)
        await batch.sent.wait()
        if batch.error is not None:
            raise Unreachable(f"Redis: {batch.error!r}") from batch.error
        if batch.receivers == 0:
            raise Unreachable(f"node {node} is not listening")

    async def _send(self, node: str, batches: list[_Batch]) -> None:
        channel = redis.node_channel(node)
        for batch in batches:
            try:
                batch.receivers = await self._bus.publish(channel, encode_batch(batch.messages))
            except redis.REDIS_ERRORS as error:
                batch.error = error
            finally:
                batch.sent.set()
