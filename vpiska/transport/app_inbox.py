"""An app's incoming ASGI messages, passed without a task switch when they can be.

hypercorn hands a request's body and its disconnect to the app over a memory channel whose
`send` and `receive` each yield to the scheduler even when the message is there, and which
weighs about 2 KiB (a WebSocket keeps it for its life). `AppInbox` keeps the same bound and
order, passes a message at once when it can and waits as the channel did when it cannot.
"""

from __future__ import annotations

from typing import Any

import outcome
import trio
from hypercorn.typing import ASGIReceiveEvent


class AppInbox:
    """The messages for one app (at most `size` waiting), as hypercorn's memory channel was,
    without its weight and without a task switch when a message can be passed at once.

    `put` waits while the inbox is full, `get` while it is empty; both in order of arrival, and
    both can be cancelled while they wait.
    """

    __slots__ = ("_items", "_size", "_getters", "_putters")

    def __init__(self, size: int) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._size = max(size, 1)
        self._getters: list[trio.lowlevel.Task] = []
        self._putters: list[tuple[trio.lowlevel.Task, ASGIReceiveEvent]] = []

    async def put(self, message: ASGIReceiveEvent) -> None:
        if self._getters:
            trio.lowlevel.reschedule(self._getters.pop(0), outcome.Value(message))
            return
        if len(self._items) < self._size:
            self._items.append(message)
            return
        waiting = (trio.lowlevel.current_task(), message)
        self._putters.append(waiting)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._putters.remove(waiting)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def get(self) -> ASGIReceiveEvent:
        if self._items:
            message = self._items.pop(0)
            if self._putters:  # room for the first waiting message
                task, waiting = self._putters.pop(0)
                self._items.append(waiting)
                trio.lowlevel.reschedule(task)
            return message
        task = trio.lowlevel.current_task()
        self._getters.append(task)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._getters.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        given: ASGIReceiveEvent = await trio.lowlevel.wait_task_rescheduled(abort)
        return given
