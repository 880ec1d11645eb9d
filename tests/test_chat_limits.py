"""Chat flood control (README: "Chat limits"): long lines and lines over the rate are dropped;
sustained abuse is disconnected with 4009; nobody else is affected."""

from __future__ import annotations

from typing import Any

import pytest

from tests.clients import Crowd, host_event, token_for
from tests.conftest import Server


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"chat_burst": 5, "chat_rate_per_second": 0.5, "max_chat_chars": 10}


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
    for i in range(20):
        try:
            await flooder.say(f"spam {i}")
        except Exception:  # disconnected mid-flood
            break
    assert await flooder.wait_closed() == 4009
    await bystander.wait_for(lambda m: m.counts()[-1] == 1)
    assert bystander.chat() == [f"spam {i}" for i in range(5)]  # the burst, nothing more
    await bystander.say("calm")
    await bystander.wait_for(lambda m: m.chat()[-1:] == ["calm"])
