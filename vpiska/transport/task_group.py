"""hypercorn's per-connection task group, handing each app an `AppInbox` (app_inbox.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.task_group import TaskGroup, _handle
from hypercorn.typing import AppWrapper, ASGIReceiveEvent, ASGISendEvent, Scope

from vpiska.transport.app_inbox import AppInbox


class VpiskaTaskGroup(TaskGroup):
    """hypercorn's per-connection task group; an app's messages go through an `AppInbox`."""

    async def spawn_app(
        self,
        app: AppWrapper,
        config: HypercornConfig,
        scope: Scope,
        send: Callable[[ASGISendEvent | None], Awaitable[None]],
    ) -> Callable[[ASGIReceiveEvent], Awaitable[None]]:
        inbox = AppInbox(config.max_app_queue_size)
        assert self._nursery is not None
        self._nursery.start_soon(_handle, app, config, scope, inbox.get, send,
                                 trio.to_thread.run_sync, trio.from_thread.run)
        return inbox.put
