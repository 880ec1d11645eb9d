"""Lines with an identity, acknowledged sending, history in pages and the host erasing a line
(API.md, "Opt-in room features"), on one node over real sockets."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.helpers.clients import Crowd, Member, host_event, token_for
from tests.helpers.server import BOTH_WRITE_PATHS, Server
from vpiska.domain import new_id

pytestmark = BOTH_WRITE_PATHS

SENT_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


def payloads(member: Member, prefix: str) -> list[Any]:
    return [json.loads(frame[len(prefix) + 1:]) for frame in member.frames
            if frame.startswith(prefix + "/")]


def texts(member: Member, prefix: str) -> list[str]:
    return [frame for frame in member.frames if frame.startswith(prefix + "/")]


async def send(member: Member, client_id: Any, text: Any) -> None:
    await member.ws.send_message("chat/" + json.dumps({"id": client_id, "text": text}))


async def test_v2_lines_carry_seq_and_sent_at_and_v1_lines_stay_as_they_were(
        server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    _, old_token = await token_for(server)
    _, new_token = await token_for(server)
    old = await crowd.join(old_token, event_id)
    new = await crowd.join(new_token, event_id, v=2)
    await old.say("one")
    await new.say("two")
    await new.wait_for(lambda m: len(m.chat()) == 2)
    await old.wait_for(lambda m: len(m.chat()) == 2)
    v2_lines = payloads(new, "chatMessage")
    assert [(line["message"], line["seq"]) for line in v2_lines] == [("one", 1), ("two", 2)]
    assert all(SENT_AT.fullmatch(line["sentAt"]) for line in v2_lines)
    assert list(v2_lines[0]) == ["userId", "userName", "userImageId", "message", "seq", "sentAt"]
    assert [list(line) for line in payloads(old, "chatMessage")] == [
        ["userId", "userName", "userImageId", "message"]] * 2
    got = await server.ok("/api/v1/events/get", {"eventId": event_id})
    assert [list(line) for line in got["chatMessages"]] == [
        ["userId", "userName", "userImageId", "message"]] * 2


async def test_a_v2_catch_up_shows_v2_lines_and_a_v1_one_the_old_frames(
        server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    _, token = await token_for(server)
    talker = await crowd.join(token, event_id)
    for text in ("a", "b", "c"):
        await talker.say(text)
    await talker.wait_for(lambda m: len(m.chat()) == 3)
    new = await crowd.join(token, event_id, v=2, since=1)
    old = await crowd.join(token, event_id, since=1)
    await new.wait_for(lambda m: len(m.chat()) == 2)
    await old.wait_for(lambda m: len(m.chat()) == 2)
    assert [(line["message"], line["seq"]) for line in payloads(new, "chatMessage")] == [
        ("b", 2), ("c", 3)]
    assert all("seq" not in line for line in payloads(old, "chatMessage"))


async def test_a_line_sent_with_an_id_is_acknowledged_once_stored_to_its_sender_only(
        server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    _, token = await token_for(server)
    _, other_token = await token_for(server)
    sender = await crowd.join(token, event_id, v=2)
    second_device = await crowd.join(token, event_id, v=2)
    other = await crowd.join(other_token, event_id, v=2)
    await send(sender, "m-1", "hello")
    await sender.wait_for(lambda m: bool(texts(m, "ack")))
    assert payloads(sender, "ack") == [{"id": "m-1", "seq": 1}]
    # The ack comes after the line it acknowledges, and the line is in the store by then.
    assert sender.frames.index(texts(sender, "ack")[0]) > sender.frames.index(
        texts(sender, "chatMessage")[0])
    assert [line.message for line in await server.store.chat(event_id)] == ["hello"]
    await other.wait_for(lambda m: m.chat() == ["hello"])
    await second_device.wait_for(lambda m: m.chat() == ["hello"])
    await other.say("sentinel")  # through the same room after the ack: nothing else came
    await second_device.wait_for(lambda m: m.chat() == ["hello", "sentinel"])
    await other.wait_for(lambda m: m.chat() == ["hello", "sentinel"])
    assert texts(other, "ack") == texts(second_device, "ack") == []


async def test_a_resend_is_stored_once_and_acknowledged_again_with_the_first_seq(
        server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    user_id, token = await token_for(server)
    _, other_token = await token_for(server)
    first = await crowd.join(token, event_id, v=2)
    await send(first, "m-1", "hello")
    await send(first, "m-1", "hello")  # same socket, maybe in the same batch
    await first.wait_for(lambda m: len(texts(m, "ack")) == 2)
    other_socket = await crowd.join(token, event_id, v=2)  # another device, or a reconnect
    await send(other_socket, "m-1", "hello")
    await other_socket.wait_for(lambda m: bool(texts(m, "ack")))
    # Another user's line with the same id is their own line.
    other_user = await crowd.join(other_token, event_id, v=2)
    await send(other_user, "m-1", "mine")
    await other_user.wait_for(lambda m: bool(texts(m, "ack")))
    assert payloads(first, "ack") == [{"id": "m-1", "seq": 1}] * 2
    assert payloads(other_socket, "ack") == [{"id": "m-1", "seq": 1}]
    assert payloads(other_user, "ack") == [{"id": "m-1", "seq": 2}]
    assert [(line.user_id, line.message) for line in await server.store.chat(event_id)][0] == (
        user_id, "hello")
    assert len(await server.store.chat(event_id)) == 2


async def test_lines_that_cannot_be_stored_get_a_nack_and_the_socket_stays(
        server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    _, token = await token_for(server)
    member = await crowd.join(token, event_id, v=2)
    long_text = "x" * (server.config.max_chat_chars + 1)
    for frame in ("chat/not json", "chat/[1]", 'chat/{"text":"no id"}', 'chat/{"id":5}',
                  'chat/{"id":"","text":"a"}', 'chat/{"id":"' + "i" * 65 + '","text":"a"}',
                  'chat/{"id":"\\ud800","text":"a"}', 'chat/{"id":["x"],"text":"a"}',
                  "chat/" + "[" * 100_00, 'chat/{"id":"a","text":' + "9" * 5000 + "}"):
        await member.ws.send_message(frame)
    await send(member, "t", 5)
    await send(member, "e", "")
    await send(member, "w", " \n\t")
    await send(member, "l", long_text)
    await send(member, "ok", "fine")
    await member.wait_for(lambda m: bool(texts(m, "ack")))
    assert payloads(member, "nack") == [{"id": None, "reason": "malformed"}] * 10 + [
        {"id": "t", "reason": "malformed"}, {"id": "e", "reason": "empty"},
        {"id": "w", "reason": "empty"}, {"id": "l", "reason": "tooLong"}]
    assert payloads(member, "ack") == [{"id": "ok", "seq": 1}]
    assert [line.message for line in await server.store.chat(event_id)] == ["fine"]


async def test_a_chat_frame_on_a_v1_socket_is_an_unknown_prefix(
        server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    _, token = await token_for(server)
    member = await crowd.join(token, event_id)
    await send(member, "m-1", "hello")
    await member.say("sentinel")
    await member.wait_for(lambda m: m.chat() == ["sentinel"])
    assert texts(member, "ack") == texts(member, "nack") == []


# A rate so slow no token comes back during the test, however loaded the machine.
@pytest.mark.parametrize("config_overrides", [{"chat_rate_per_second": 0.001, "chat_burst": 3}])
async def test_a_line_over_the_rate_gets_a_nack_rate_limited(
        server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    _, token = await token_for(server)
    member = await crowd.join(token, event_id, v=2)
    burst = server.config.chat_burst
    for i in range(burst + 1):  # the last one is over the burst
        await send(member, f"m{i}", f"line {i}")
    await member.wait_for(lambda m: len(texts(m, "ack")) + len(texts(m, "nack")) == burst + 1)
    assert {"id": f"m{burst}", "reason": "rateLimited"} in payloads(member, "nack")


async def test_history_pages_run_backwards_oldest_first_in_each(
        server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    _, token = await token_for(server)
    member = await crowd.join(token, event_id, v=2)
    for i in range(5):
        await send(member, f"m{i}", f"line {i}")
    await member.wait_for(lambda m: len(texts(m, "ack")) == 5)
    last = await server.ok("/api/v1/events/chat", {"eventId": event_id, "limit": 2})
    assert [(m["message"], m["seq"]) for m in last["messages"]] == [("line 3", 4), ("line 4", 5)]
    assert last["hasMore"] is True
    assert last["messages"][0] == payloads(member, "chatMessage")[3]
    before = await server.ok("/api/v1/events/chat",
                             {"eventId": event_id, "limit": 2, "before": 4})
    assert [m["seq"] for m in before["messages"]] == [2, 3]
    first = await server.ok("/api/v1/events/chat",
                            {"eventId": event_id, "limit": 2, "before": 2})
    assert [m["seq"] for m in first["messages"]] == [1]
    assert first["hasMore"] is False
    everything = await server.ok("/api/v1/events/chat", {"eventId": event_id})
    assert [m["seq"] for m in everything["messages"]] == [1, 2, 3, 4, 5]
    assert everything["hasMore"] is False
    beyond = await server.ok("/api/v1/events/chat", {"eventId": event_id, "before": 99})
    assert len(beyond["messages"]) == 5


async def test_history_refuses_bad_arguments_with_clear_codes(server: Server) -> None:
    token, event_id = await host_event(server)
    for limit in ("0", "201", "-1", '"5"', "2.0", "1e999", "true", "null", "[5]", "1e2"):
        assert await raw_codes(server, "/api/v1/events/chat",
                               f'{{"eventId":"{event_id}","limit":{limit}}}') == ["LimitInvalid"]
    for before in ("0", "-5", '"3"', "1.5", "1e999", "-1e999", "false", "{}"):
        assert await raw_codes(server, "/api/v1/events/chat",
                               f'{{"eventId":"{event_id}","before":{before}}}') == [
            "BeforeInvalid"]
    assert await server.codes("/api/v1/events/chat", {"eventId": "x"}) == ["InvalidIdFormat"]
    assert await server.codes("/api/v1/events/chat", {}) == ["IdIsEmpty"]
    assert await server.codes("/api/v1/events/chat", {"eventId": new_event_id()}) == [
        "EventNotFound"]
    await server.ok("/api/v1/events/close", {"eventId": event_id}, token=token)
    assert await server.codes("/api/v1/events/chat", {"eventId": event_id}) == ["EventNotFound"]


def new_event_id() -> str:
    return new_id()


async def raw_codes(server: Server, path: str, body: str, token: str | None = None
                    ) -> list[str]:
    """The error codes for a JSON body written by hand (1e999 is JSON; Python cannot send it)."""
    return await server.codes(path, content=body.encode(), token=token,
                              headers={"Content-Type": "application/json"})


async def test_the_host_erases_a_line_and_v2_sockets_are_told(
        server: Server, crowd: Crowd) -> None:
    host, event_id = await host_event(server)
    _, token = await token_for(server)
    new = await crowd.join(token, event_id, v=2)
    old = await crowd.join(token, event_id)
    for text in ("keep", "oops", "keep too"):
        await new.say(text)
    await old.wait_for(lambda m: len(m.chat()) == 3)
    assert await server.codes("/api/v1/events/chat/remove", {"eventId": event_id, "seq": 2},
                              token=token) == ["UserIsNotOwner"]
    await server.ok("/api/v1/events/chat/remove", {"eventId": event_id, "seq": 2}, token=host)
    await new.wait_for(lambda m: bool(texts(m, "chatRemoved")))
    assert texts(new, "chatRemoved") == ["chatRemoved/2"]
    got = await server.ok("/api/v1/events/get", {"eventId": event_id})
    assert [line["message"] for line in got["chatMessages"]] == ["keep", "", "keep too"]
    page = await server.ok("/api/v1/events/chat", {"eventId": event_id})
    assert [(m["message"], m["seq"]) for m in page["messages"]] == [
        ("keep", 1), ("", 2), ("keep too", 3)]
    await new.say("sentinel")
    await old.wait_for(lambda m: m.chat()[-1:] == ["sentinel"])
    assert texts(old, "chatRemoved") == []
    for seq, code in (("5", "ChatMessageNotFound"), ("0", "SeqInvalid"), ('"2"', "SeqInvalid"),
                      ("true", "SeqInvalid"), ("1e999", "SeqInvalid"), ("null", "SeqInvalid"),
                      ("2.0", "SeqInvalid"), ("9" * 5000, "InternalError")):
        assert await raw_codes(server, "/api/v1/events/chat/remove",
                               f'{{"eventId":"{event_id}","seq":{seq}}}', token=host) == [code]
    assert await server.codes("/api/v1/events/chat/remove",
                              {"eventId": event_id, "seq": 1}) == ["unauthorized"]


async def test_a_frame_over_the_websocket_limit_closes_the_socket_not_the_room(
        server: Server, crowd: Crowd) -> None:
    _, event_id = await host_event(server)
    _, token = await token_for(server)
    big = await crowd.join(token, event_id, v=2)
    witness = await crowd.join(token, event_id, v=2)
    try:
        await send(big, "huge", "x" * 10_000_000)
    except Exception:  # the server may close while the 10 MB are still on their way
        pass
    assert await big.wait_closed() == 1009
    await send(witness, "after", "still here")
    await witness.wait_for(lambda m: bool(texts(m, "ack")))
    assert payloads(witness, "ack") == [{"id": "after", "seq": 1}]
