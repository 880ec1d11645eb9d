"""One call whose answer every caller that arrived in time shares.

A gateway reads an event's state once for all the requests waiting at that moment, and a node
looks an event's owner up once for all the handshakes that need it at once: without that, a
reconnect storm or a burst of `events/get` turned into one Redis round trip per caller. The
call runs in a task of the node's, not in one caller's, so a caller that goes away takes
nothing from the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

from vpiska.errors import DomainError, ErrorCode

T = TypeVar("T")


@dataclasses.dataclass(eq=False)
class SharedAnswer(Generic[T]):
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    answer: T | DomainError | None = None

    async def fill(self, call: Callable[[], Awaitable[T]]) -> None:
        """Run `call` and keep its answer or its refusal for the callers.

        Error handling: whatever happens the callers get an answer; a failure other than a
        refusal (logged by the caller's `contained`), or a cancellation, is InternalError.
        """
        try:
            self.answer = await call()
        except DomainError as refused:
            self.answer = refused
        finally:
            if self.answer is None:
                self.answer = DomainError(ErrorCode.INTERNAL_ERROR)
            self.done.set()

    async def wait(self) -> T:
        """The answer, once there is one. Error handling: the refusal, raised anew."""
        await self.done.wait()
        if isinstance(self.answer, DomainError):
            raise DomainError(*self.answer.codes)
        assert self.answer is not None
        return self.answer
