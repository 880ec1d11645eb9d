"""What every member client of the tests has in common, whichever socket it reads: the frames it
received, the counts and chat lines in them, its close code, and waits on any of these.

Two clients share it: `Member` (tests/helpers/clients.py, over trio-websocket) and `RawMember`
(tests/helpers/raw_ws.py, hand-rolled frames: cheap enough for a crowd of a thousand, and able
to stay silent at a ping). A test reads either one the same way."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Self

import trio


class MemberClient(ABC):
    """One WebSocket of a member, read continuously by a task of the test's nursery (the
    subclass's `collect`), which reports each text frame (`_received`) and the end (`_ended`).

    Counts and chat lines are parsed as frames arrive: conditions waited for read them at every
    frame."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self._counts: list[int] = []  # usersCount of each eventUpdated
        self._chat: list[str] = []  # message of each chatMessage
        self.close_code: int | None = None  # the server's, if it closed with a close frame
        self.closed = trio.Event()  # the connection is closed or gone
        self._changed = trio.Event()

    def counts(self) -> list[int]:
        """usersCount of every eventUpdated frame received, in order."""
        return self._counts

    def chat(self) -> list[str]:
        """Message texts of the chatMessage frames received, in order."""
        return self._chat

    @abstractmethod
    async def collect(self) -> None:
        """Read the socket until it ends, reporting what comes (`_received`, `_ended`)."""

    @abstractmethod
    async def send(self, frame: str) -> None:
        """Send a text frame as it is."""

    async def say(self, text: str) -> None:
        """Send a chat line, as `chatMessage/<text>` (API.md)."""
        await self.send(f"chatMessage/{text}")

    async def wait_for(self, done: Callable[[Self], bool],
                       timeout: float = 15) -> None:  # noqa: ASYNC109 (a test's deadline)
        """Return once `done(self)` holds, checked at every frame; fails at once if the
        connection ends first."""
        with trio.fail_after(timeout):
            while not done(self):
                if self.closed.is_set():
                    raise AssertionError(f"closed ({self.close_code}) before the condition; "
                                         f"frames: {self.frames[-5:]}")
                await self._changed.wait()

    async def wait_for_count(self, count: int,
                             timeout: float = 60) -> None:  # noqa: ASYNC109 (as above)
        """Return once the last count received is `count`."""
        await self.wait_for(lambda m: m.counts()[-1:] == [count], timeout)

    async def next_change(self) -> None:
        """Return at the next frame received or at the close."""
        if not self.closed.is_set():
            await self._changed.wait()

    async def wait_closed(self, timeout: float = 15) -> int | None:  # noqa: ASYNC109 (as above)
        with trio.fail_after(timeout):
            await self.closed.wait()
        return self.close_code

    def _received(self, frame: str) -> None:
        self.frames.append(frame)
        if frame.startswith("eventUpdated/"):
            self._counts.append(json.loads(frame[13:])["usersCount"])
        elif frame.startswith("chatMessage/"):
            self._chat.append(json.loads(frame[12:])["message"])
        self._changed_now()

    def _ended(self, close_code: int | None) -> None:
        self.close_code = close_code
        self.closed.set()
        self._changed_now()

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
