"""Chat flood control (docs/protocol.md, "Chat limits"): long lines and lines over the rate are
dropped; sustained abuse is disconnected with 4009; nobody else is affected."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.clients import Crowd, flood, host_event, token_for
from tests.helpers.server import Server


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    # A token comes back every 100 s, so the burst is all a member may say in a test, however
    # slowly a loaded machine delivers its lines (at 0.5/s a 2 s stall admitted a sixth).
    return {"chat_burst": 5, "chat_rate_per_second": 0.01, "max_chat_chars": 10}


async def test_overlong_line_is_dropped(server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    _, ann = await token_for(server)
    member = await crowd.join(ann, event_id)
    await member.say("x" * 11)
    await member.say("x" * 10)
    await member.wait_for(lambda m: m.chat() == ["x" * 10])


async def test_flooding_member_is_disconnected_with_4009(server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    _, flooder_token = await token_for(server)
    _, bystander_token = await token_for(server)
    bystander = await crowd.join(bystander_token, event_id)
    flooder = await crowd.join(flooder_token, event_id)
    await bystander.wait_for(lambda m: m.counts()[-1:] == [2])
    await flood(flooder, 20)
    assert await flooder.wait_closed() == 4009
    # The flooder's admitted lines were in the room's inbox before it was closed, so a line
    # said now comes after them: once it is seen, everything the flooder got in has been.
    await bystander.say("calm")
    await bystander.wait_for(lambda m: m.chat()[-1:] == ["calm"])
    assert bystander.chat() == [f"spam {i}" for i in range(5)] + ["calm"]  # the burst only
    await bystander.wait_for(lambda m: m.counts()[-1:] == [1])  # the flooder has left
