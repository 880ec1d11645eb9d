"""What nodes say to each other: a batch of messages to one node reads back as those messages,
and one malformed message in it costs only itself (vpiska/cluster/protocol.py)."""

from __future__ import annotations

import json
import logging

import pytest

from vpiska.cluster.protocol import (
    Frames,
    Notice,
    Reply,
    Request,
    Shown,
    decode,
    decode_all,
    encode,
    encode_batch,
)

MESSAGES: list[Request | Reply | Notice] = [
    Request(7, "node-a", "snapshot", "event-1", {}),
    Reply(3, "ok", {"event": {"id": "event-2"}, "chat": ["line"]}),
    Notice("chat", "event-1", {"user": "u", "text": "привет, \"quoted\" / ]["}),
]


def test_a_batch_reads_back_as_its_messages_in_order() -> None:
    assert decode_all(encode_batch([encode(message) for message in MESSAGES])) == MESSAGES


def test_a_single_message_goes_as_it_is() -> None:
    assert encode_batch([encode(MESSAGES[0])]) == encode(MESSAGES[0])
    assert decode_all(encode(MESSAGES[0])) == [MESSAGES[0]]


def test_a_malformed_message_in_a_batch_is_dropped_alone(
        caplog: pytest.LogCaptureFixture) -> None:
    broken = json.dumps(["q", "not a number", "node-a"]).encode()
    unknown = json.dumps(["?", 1]).encode()
    batch = encode_batch([encode(MESSAGES[0]), broken, encode(MESSAGES[1]), unknown])
    with caplog.at_level(logging.WARNING):
        assert decode_all(batch) == MESSAGES[:2]
    assert [r.message for r in caplog.records] == ["malformed cluster message dropped"] * 2


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'["b"', b"[[[[" * 10_000])
def test_what_is_not_a_message_at_all_is_dropped(data: bytes) -> None:
    assert decode_all(data) == []


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
