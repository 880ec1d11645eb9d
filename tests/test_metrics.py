"""`GET /metrics`: Prometheus text with requests, live rooms, store calls and room events."""

from __future__ import annotations

import pytest
import trio

from tests.helpers.clients import Crowd, flood, host_event, token_for, wait_for_sockets
from tests.helpers.metrics import scrape, value
from tests.helpers.raw_ws import RawSocket, resource
from tests.helpers.server import Server, port_of
from vpiska.metrics import LiveEvents, LiveStats


async def test_requests_are_counted_by_route_template_and_status(server: Server) -> None:
    media_id = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    before = await scrape(server)
    await server.http.get(f"/api/v1/media/metadata/{media_id}")
    await server.http.get(f"/api/v1/media/{media_id}")
    await server.http.get("/api/v1/no/such/path")
    after = await scrape(server)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("vpiska_http_requests_total", route="/api/v1/media/metadata/<media_id>",
                method="GET", status="200") == 1
    assert grew("vpiska_http_requests_total", route="/api/v1/media/<media_id>",
                method="GET", status="404") == 1
    assert grew("vpiska_http_requests_total", route="unmatched", method="GET",
                status="404") == 1
    assert grew("vpiska_http_request_duration_seconds_count",
                route="/api/v1/media/<media_id>", method="GET") == 1
    assert not any(media_id in str(labels) for _, labels in after)  # ids never become labels


async def test_live_rooms_are_read_at_scrape_time(server: Server, crowd: Crowd) -> None:
    assert value(await scrape(server), "vpiska_open_events") == 0
    _, first_event = await host_event(server)
    _, second_event = await host_event(server)
    _, ann = await token_for(server)
    _, bob = await token_for(server)
    # Each join returns once its room has taken the member in (its first frame), so all four
    # sockets are in the member tables before the scrape.
    phone = await crowd.join(ann, first_event)
    await crowd.join(ann, first_event)  # ann's second device
    await crowd.join(bob, first_event)
    await crowd.join(bob, second_event)
    await phone.wait_for(lambda m: m.counts()[-1:] == [2])
    samples = await scrape(server)
    assert value(samples, "vpiska_open_events") == 2
    assert value(samples, "vpiska_ws_connected_sockets") == 4
    assert value(samples, "vpiska_event_members") == 3  # ann and bob in one, bob in the other
    assert value(samples, "vpiska_actor_restarts_total") == 0


async def test_store_calls_are_timed(server: Server) -> None:
    before = value(await scrape(server), "vpiska_store_call_duration_seconds_count",
                   store="sqlite")
    await server.sign_up()
    after = value(await scrape(server), "vpiska_store_call_duration_seconds_count",
                  store="sqlite")
    assert after > before


async def test_every_room_metric_is_exposed_before_anything_happens(server: Server) -> None:
    names = {name for name, _ in await scrape(server)}
    assert {
        "vpiska_ws_frames_sent_total", "vpiska_ws_disconnects_total",
        "vpiska_chat_batch_lines_count", "vpiska_store_call_duration_seconds_count",
        "vpiska_http_requests_total", "process_resident_memory_bytes",
    } <= names


def test_live_figures_are_read_when_scraped() -> None:
    stats = [LiveStats(open_events=1, sockets=3, members=2, restarts=2)]
    families = {family.name: family for family in LiveEvents(lambda: stats[-1]).collect()}
    assert families["vpiska_actor_restarts"].samples[0].value == 2
    assert families["vpiska_open_events"].samples[0].value == 1
    stats.append(LiveStats(open_events=0, sockets=0, members=0, restarts=5))
    families = {family.name: family for family in LiveEvents(lambda: stats[-1]).collect()}
    assert families["vpiska_actor_restarts"].samples[0].value == 5


async def test_frames_and_chat_batches_are_counted(server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    before = await scrape(server)
    member = await crowd.join((await token_for(server))[1], event_id)
    await member.say("hello")
    await member.wait_for(lambda m: m.chat() == ["hello"])
    after = await scrape(server)
    assert (value(after, "vpiska_ws_frames_sent_total")
            - value(before, "vpiska_ws_frames_sent_total")) >= 2  # its join and its line
    assert (value(after, "vpiska_chat_batch_lines_count")
            - value(before, "vpiska_chat_batch_lines_count")) == 1


@pytest.mark.parametrize("config_overrides", [{"chat_burst": 3, "chat_rate_per_second": 0.5}])
async def test_flooding_disconnects_are_counted(server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    before = value(await scrape(server), "vpiska_ws_disconnects_total", reason="flooding")
    flooder = await crowd.join((await token_for(server))[1], event_id)
    await flood(flooder, 10)
    assert await flooder.wait_closed() == 4009
    after = value(await scrape(server), "vpiska_ws_disconnects_total", reason="flooding")
    assert after - before == 1


# Long enough that no HTTP call of the test outlives the read timeout (two intervals) on a loaded
# machine; no live WebSocket takes part, so none can be dropped for being slow to answer.
PING = 2.0


@pytest.mark.parametrize("config_overrides", [{"ws_ping_seconds": PING}])
async def test_keep_alive_disconnects_are_counted(server: Server) -> None:
    _, event_id = await host_event(server)
    before = value(await scrape(server), "vpiska_ws_disconnects_total", reason="keep_alive")
    silent = await RawSocket.connect(port_of(server),
                                     resource(server, (await token_for(server))[1], event_id))
    async with silent.stream:
        # Its join's state: it is in the room.
        assert (await silent.next_text()).startswith("eventUpdated/")
        # It never answers a ping, so the server drops it. The drop is counted before the
        # connection is closed: once the close is seen here, the counter has it.
        with trio.fail_after(2 * PING + 30):
            await silent.pings_until_closed()
    await wait_for_sockets(server, 0)  # it has left the room too
    after = value(await scrape(server), "vpiska_ws_disconnects_total", reason="keep_alive")
    assert after - before == 1
