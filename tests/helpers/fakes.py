"""Fakes of the layers below what a test exercises, injected, never patched in.

`FaultyStore` wraps a real store and fails chosen calls, as a lost database would: the server
under test is served on it (the `wrap_store` fixture of tests/conftest.py, or `serve(store=)`).
`RecordingOutbox` is a member's socket for the room's unit tests: it keeps what it is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import trio

from vpiska.actors.frames import Frame
from vpiska.actors.member import CloseCode, OutboxClosed, OutboxFull
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
