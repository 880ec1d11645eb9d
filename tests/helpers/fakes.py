"""Fakes of the layers below what a test exercises, injected, never patched in.

`FaultyStore` wraps a real store and fails chosen calls, as a lost database would: the server
under test is served on it (the `wrap_store` fixture of tests/conftest.py, or `serve(store=)`).
`RecordingOutbox` is a member's socket for the room's unit tests: it keeps what it is sent.
`FakeRedis` is the Redis of the cluster's parts (vpiska/cluster) on virtual time, which a test
can cut off as a partition would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
from coredis.exceptions import ConnectionError as RedisConnectionError

from vpiska.actors.frames import Frame
from vpiska.actors.member import CloseCode, OutboxClosed, OutboxFull
from vpiska.cluster import redis
from vpiska.store import Store


class StoreFailure(ConnectionError):
    """What a FaultyStore raises: a store fault, not a refusal."""


class FaultyStore:
    """A store that behaves like `inner` except for the calls told to fail or hang."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self._faults: dict[str, Callable[..., bool]] = {}
        self._hangs: dict[str, trio.Event] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._called = trio.Event()

    def fail(self, method: str, when: Callable[..., bool] = lambda *args: True) -> None:
        """Make `method` raise StoreFailure whenever `when(*args)` is true."""
        self._faults[method] = when

    def heal(self, method: str) -> None:
        self._faults.pop(method, None)

    def hang(self, method: str) -> trio.Event:
        """Make `method` wait until the returned event is set (or the caller is cancelled)."""
        released = self._hangs[method] = trio.Event()
        return released

    def count(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)

    async def wait_calls(self, method: str, count: int) -> None:
        """Return once `method` has been called `count` times (its result may still be due)."""
        while self.count(method) < count:
            await self._called.wait()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args))
            self._called.set()
            self._called = trio.Event()
            hang = self._hangs.get(name)
            if hang is not None:
                await hang.wait()
            fault = self._faults.get(name)
            if fault is not None and fault(*args):
                raise StoreFailure(f"injected failure of {name}")
            return await attribute(*args, **kwargs)

        return call


class RecordingOutbox:
    """An Outbox that records frame texts; `capacity` frames before it reports a slow consumer.

    `take()` empties it, as a socket's writer would.
    """

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.frames: list[str] = []
        self.close_code: CloseCode | None = None
        self.aborted = False
        self.gone = False

    def deliver(self, frame: Frame) -> None:
        if self.close_code is not None or self.gone:
            raise OutboxClosed
        if len(self.frames) >= self.capacity:
            raise OutboxFull
        self.frames.append(frame.text)

    def deliver_all(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            self.deliver(frame)

    def finish(self, code: CloseCode) -> None:
        if self.close_code is None:
            self.close_code = code

    def abort(self, code: CloseCode) -> None:
        if self.close_code is None or not self.aborted:
            self.close_code = code
            self.aborted = True

    def take(self) -> list[str]:
        frames, self.frames = self.frames, []
        return frames


class TimedOutbox(RecordingOutbox):
    """A RecordingOutbox that also notes the (virtual) time each frame arrived at, for tests
    of when the room sends something, not only what."""

    def __init__(self, capacity: int = 1000) -> None:
        super().__init__(capacity)
        self.arrivals: list[tuple[float, str]] = []

    def deliver(self, frame: Frame) -> None:
        super().deliver(frame)
        self.arrivals.append((trio.current_time(), frame.text))


class FakeRedis:
    """The keys, commands and scripts of vpiska/cluster/redis.py that the node's parts use, each
    script one step as in Redis, with expiries on the trio clock (`autojump_clock`).

    `cut()` makes every call fail as an unreachable Redis does, until `heal()`; what it holds
    meanwhile expires as it would. With `answer_delay` each call is answered that long after
    it is made, within coredis' command timeout or TimeoutError (`answering` is set at each).
    `calls` counts the calls by command (a script by its constant's name in redis.py)."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[bytes, float]] = {}  # key: (value, expiry)
        self._counters: dict[str, int] = {}
        self._nodes: dict[str, float] = {}  # the nodes set: node id, expiry
        self.published: list[tuple[str, bytes]] = []
        self.calls: dict[str, int] = {}
        self.is_cut = False
        self.answer_delay = 0.0
        self.answering = trio.Event()

    def cut(self) -> None:
        self.is_cut = True

    def heal(self) -> None:
        self.is_cut = False

    async def _call(self, name: str) -> None:
        await trio.lowlevel.checkpoint()
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.is_cut:
            raise RedisConnectionError("injected: Redis unreachable")
        if self.answer_delay:
            self.answering.set()
            self.answering = trio.Event()
            with trio.move_on_after(redis.COMMAND_TIMEOUT_SECONDS):  # as coredis bounds a command
                await trio.sleep(self.answer_delay)
                await trio.lowlevel.checkpoint()  # the answer is read: it may be too late
                return
            raise TimeoutError(f"{name} timed out after {redis.COMMAND_TIMEOUT_SECONDS} s")

    def value(self, key: str) -> bytes | None:
        """The key's value now, if it has one and it has not expired."""
        value, expiry = self._values.get(key, (None, 0.0))
        return value if value is not None and expiry > trio.current_time() else None

    def expiry(self, key: str) -> float:
        """When `key` expires (its value is gone from then on)."""
        return self._values[key][1]

    def put(self, key: str, value: str, ttl: float = float("inf")) -> None:
        """Set `key` as another node would."""
        self._values[key] = (value.encode(), trio.current_time() + ttl)

    def delete(self, key: str) -> None:
        self._values.pop(key, None)

    async def get(self, key: str) -> bytes | None:
        await self._call("get")
        return self.value(key)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        await self._call("mget")
        return [self.value(key) for key in keys]

    async def publish(self, channel: str, data: bytes) -> int:
        await self._call("publish")
        self.published.append((channel, data))
        return 1

    def register_script(self, source: str) -> Callable[..., Awaitable[Any]]:
        scripts: dict[str, tuple[str, Callable[[list[str], list[Any]], Any]]] = {
            redis.HEARTBEAT: ("HEARTBEAT", self._heartbeat),
            redis.ACQUIRE: ("ACQUIRE", self._acquire),
            redis.RENEW: ("RENEW", self._renew),
            redis.RELEASE: ("RELEASE", self._release),
            redis.RAISE_EPOCH: ("RAISE_EPOCH", self._raise_epoch),
        }
        name, run = scripts[source]

        async def script(*, keys: list[str], args: list[Any]) -> Any:
            await self._call(name)
            return run(keys, args)

        return script

    def _heartbeat(self, keys: list[str], args: list[Any]) -> list[bytes]:
        node, ttl_ms, beating = str(args[0]), int(args[1]), args[2] == "1"
        now = trio.current_time()
        if beating:
            self._nodes[node] = now + ttl_ms / 1000
        else:
            self._nodes.pop(node, None)
        self._nodes = {n: expiry for n, expiry in self._nodes.items() if expiry > now}
        return [n.encode() for n in sorted(self._nodes, key=self._nodes.__getitem__)]

    def _acquire(self, keys: list[str], args: list[Any]) -> int | None:
        lease, counter = keys
        if self.value(lease) is not None:
            return None
        epoch = self._counters[counter] = self._counters.get(counter, 0) + 1
        self.put(lease, f"{args[0]} {epoch}", int(args[1]) / 1000)
        return epoch

    def _renew(self, keys: list[str], args: list[Any]) -> list[int]:
        lost = []
        for position, key in enumerate(keys, start=1):
            held = self.value(key)
            if held is not None and held.decode() == args[position]:
                self.put(key, args[position], int(args[0]) / 1000)
            else:
                lost.append(position)
        return lost

    def _release(self, keys: list[str], args: list[Any]) -> int:
        held = self.value(keys[0])
        if held is None or held.decode() != args[0]:
            return 0
        self.delete(keys[0])
        return 1

    def _raise_epoch(self, keys: list[str], args: list[Any]) -> int:
        self._counters[keys[0]] = max(self._counters.get(keys[0], 0), int(args[0]))
        return 1
