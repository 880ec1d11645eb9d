"""What nodes say to each other (vpiska/cluster/protocol.py): a batch of messages to one node
reads back as those messages, one malformed message in it costs only itself (one warning that
says what was wrong), and a request whose operation cannot be read is still answerable."""

from __future__ import annotations

import json
import logging

import pytest

from vpiska.cluster import protocol
from vpiska.cluster.protocol import (
    Answer,
    BadRequest,
    Frames,
    Notice,
    Request,
    Shown,
    decode,
    decode_all,
    encode,
    encode_batch,
)

MESSAGES: list[Request | Answer | Notice] = [
    Request(7, "node-a", protocol.Snapshot(), "event-1"),
    Answer(3, "ok", {"event": {"id": "event-2"}, "chat": ["line"]}),
    Notice(protocol.Chat("u", "bob", "", "привет, \"quoted\" / ]["), "event-1"),
]


def test_a_batch_reads_back_as_its_messages_in_order() -> None:
    assert decode_all(encode_batch([encode(message) for message in MESSAGES])) == MESSAGES


def test_a_single_message_goes_as_it_is() -> None:
    assert encode_batch([encode(MESSAGES[0])]) == encode(MESSAGES[0])
    assert decode_all(encode(MESSAGES[0])) == [MESSAGES[0]]


def test_a_malformed_message_in_a_batch_is_dropped_alone_with_one_warning_saying_why(
        caplog: pytest.LogCaptureFixture) -> None:
    broken = json.dumps(["q", "not a number", "node-a"]).encode()
    unknown = json.dumps(["?", 1]).encode()
    bad_notice = json.dumps(["n", "leave", "event-1", {"key": 7}]).encode()
    batch = encode_batch([encode(MESSAGES[0]), broken, encode(MESSAGES[1]), unknown,
                          bad_notice])
    with caplog.at_level(logging.WARNING):
        assert decode_all(batch) == MESSAGES[:2]
    assert [r.message for r in caplog.records] == ["malformed cluster message dropped"] * 3
    assert "Expected `str`, got `int`" in caplog.records[2].__dict__["cause"]


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'["b"', b'["b",', b'["b",1]',
                                  b"[[[[" * 10_000, b'["b",' + b"[[[[" * 10_000])
def test_what_is_not_a_message_at_all_is_dropped(data: bytes) -> None:
    assert decode_all(data) == []


@pytest.mark.parametrize(("body", "cause"), [
    (["q", 7, "node-b", "teleport", "event-1", {}], "unknown request 'teleport'"),
    (["q", 7, "node-b", "remove_chat", "event-1", {"by": "u1", "seq": "3"}],
     "Expected `int`, got `str` - at `$.seq`"),
    (["q", 7, "node-b", "join", "event-1", {"user": "u", "name": "n", "image": "", "key": "k",
                                           "v": 3}],
     "Expected `int` <= 2 - at `$.v`"),
    (["q", 7, "node-b", "close", "event-1", []], "Expected `object`, got `array`"),
], ids=["unknown-op", "wrong-type", "unknown-version", "args-not-an-object"])
def test_a_request_whose_operation_does_not_read_is_a_bad_request_to_answer(
        body: list[object], cause: str) -> None:
    assert decode(json.dumps(body).encode()) == BadRequest(7, "node-b", str(body[3]),
                                                           "event-1", cause)


def test_a_notice_of_an_unknown_operation_is_dropped() -> None:
    assert decode(json.dumps(["n", "teleport", "event-1", {}]).encode()) is None


def test_frames_for_everyone_keep_the_layout_nodes_before_v2_read() -> None:
    frames = Frames("node-a", 3, 9, [Shown(4, "chatMessage/{}"), Shown(None, "closeEvent/")])
    assert json.loads(encode(frames)) == ["f", "node-a", 3, 9,
                                          [[4, "chatMessage/{}"], [None, "closeEvent/"]]]
    assert decode(encode(frames)) == frames


def test_frames_for_one_version_or_one_socket_read_back() -> None:
    frames = Frames("node-a", 3, 9, [Shown(4, "chatMessage/{}", 1), Shown(4, "chatMessage/{", 2),
                                     Shown(None, "ack/{}", 2, "node-b-7"),
                                     Shown(None, "membersLeft/[]", 3)])
    assert decode(encode(frames)) == frames


@pytest.mark.parametrize("entry", [[None, "x", 4], [None, "x", 0, "key", "more"], [None]])
def test_a_frame_entry_of_no_known_shape_drops_its_message(entry: list[object]) -> None:
    assert decode(json.dumps(["f", "node-a", 3, 9, [entry]]).encode()) is None
