"""Keep-alive: a peer that stops answering pings is dropped and leaves the room.

Time is read off the server's own clock, not the test's: every ping a client gets is the
server's word that one more interval has passed. A peer that answered pings for more intervals
than the silence limit has therefore been kept, and the pings a silent peer got before it was
dropped bound when that happened, whatever a loaded machine did to the wall clock.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.helpers.clients import host_event, token_for
from tests.helpers.raw_ws import RawMember, RawSocket, resource
from tests.helpers.server import Server, port_of

# The peers answer pings from this process, which also runs the server: a stall of about one
# interval would drop a live peer. 2 s leaves a loaded machine room; it costs ~6 s a run.
PING = 2.0


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"ws_ping_seconds": PING}


async def test_silent_peer_is_dropped_and_live_peer_stays(
    server: Server, nursery: trio.Nursery
) -> None:
    _, event_id = await host_event(server)
    _, live_token = await token_for(server)
    _, silent_token = await token_for(server)
    live = RawMember(await RawSocket.connect(port_of(server), resource(server, live_token,
                                                                       event_id)),
                     answer_pings=True)
    nursery.start_soon(live.collect)
    silent = await RawSocket.connect(port_of(server), resource(server, silent_token, event_id))
    async with live.raw.stream, silent.stream:
        await live.wait_for_count(2)  # both are in the room
        # A generous deadline only; when the drop came is bounded below, in pings.
        with trio.fail_after(2 * PING + 30):
            pings = await silent.pings_until_closed()
        # Dropped after two silent intervals: it got those intervals' pings (one more if the
        # drop and a ping fall due together), not a ping per interval for ever.
        assert pings <= 3, pings
        await live.wait_for_count(1, 15)  # it left the room (the live peer last saw 2)
        # The live peer stays well past the silence limit: three intervals after it joined,
        # it still gets its lines.
        await live.wait_for(lambda m: m.pings >= 3, 3 * PING + 30)
        await live.say("still here")
        await live.wait_for(lambda m: m.chat() == ["still here"])
