"""Keep-alive: a peer that stops answering pings is dropped and leaves the room."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.clients import Crowd, host_event, token_for
from tests.conftest import Server
from tests.raw_ws import RawSocket
from tests.test_websocket import port_of, resource

PING = 0.3


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"ws_ping_seconds": PING}


async def test_silent_peer_is_dropped_and_live_peer_stays(server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    _, watcher_token = await token_for(server)
    _, silent_token = await token_for(server)
    watcher = await crowd.join(watcher_token, event_id)  # trio-websocket answers pings
    silent = await RawSocket.connect(port_of(server), resource(server, silent_token, event_id))
    async with silent.stream:
        await watcher.wait_for(lambda m: m.counts()[-1:] == [2])
        dropped_after = trio.current_time()
        await watcher.wait_for(lambda m: m.counts()[-1:] == [1], timeout=10 * PING)
        assert trio.current_time() - dropped_after <= 3 * PING + 0.5  # two intervals + slack
        with trio.fail_after(5):  # the server hung up on it
            with pytest.raises(EOFError):
                while True:
                    await silent.next_frame()
    await trio.sleep(5 * PING)  # several ping intervals: the answering peer is kept
    await watcher.say("still here")
    await watcher.wait_for(lambda m: m.chat() == ["still here"])
