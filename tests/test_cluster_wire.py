"""The bytes nodes wrote before the cluster's messages were typed (vpiska/cluster/protocol.py),
one literal per message kind and per operation, captured from the JSON codec of the time: the
typed codec writes the same bytes and reads these back to the same values, so nodes of both
versions talk during a rolling deploy."""

from __future__ import annotations

import json
from typing import get_args

import pytest

from vpiska.cluster import protocol
from vpiska.cluster.protocol import (
    Answer,
    CloseAll,
    CloseSockets,
    Frames,
    Handover,
    Hello,
    Notice,
    Request,
    Shown,
    SyncedSocket,
    decode,
    decode_all,
    encode,
    encode_batch,
)

WIRE: dict[str, bytes] = {
    "frames": (
        b'["f","node-a",3,9,[[4,'
        b'"chatMessage/{\\"message\\":\\"\xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82\\"}"],'
        b'[5,"chatMessage/{}",1],[null,"membersLeft/[]",3],[null,"ack/{}",2,"node-b-7"],[null,'
        b'"closeEvent/",0,"node-b-8"]]]'
    ),
    "hello": b'["h","node-a",3,10,42]',
    "handover": b'["v","node-a",3,11]',
    "close_all": b'["x","node-a",3,12,4000]',
    "close_sockets": b'["k","node-a",3,13,4003,["node-b-1","node-b-7"]]',
    "join_v1": (
        b'["q",7,"node-b","join","event-1",{"user":"u1",'
        b'"name":"\xd0\x9b\xd1\x91\xd1\x88\xd0\xb0","image":"","key":"node-b-1"}]'
    ),
    "join_v2": (
        b'["q",8,"node-b","join","event-1",{"user":"u1",'
        b'"name":"\xd0\x9b\xd1\x91\xd1\x88\xd0\xb0","image":"img","key":"node-b-2","v":2}]'
    ),
    "snapshot": b'["q",9,"node-b","snapshot","event-1",{}]',
    "position": b'["q",10,"node-b","position","event-1",{}]',
    "members": b'["q",11,"node-b","members","event-1",{}]',
    "update": (
        b'["q",12,"node-b","update","event-1",{"by":"u1","address":"street 2","x":55.755826,'
        b'"y":37.6173}]'
    ),
    "add_media": (
        b'["q",13,"node-b","add_media","event-1",{"by":"u1","id":"m1","content_type":"image/png"}]'
    ),
    "remove_media": b'["q",14,"node-b","remove_media","event-1",{"by":"u1","media_id":"m1"}]',
    "close": b'["q",15,"node-b","close","event-1",{"by":"u1"}]',
    "remove_chat": b'["q",16,"node-b","remove_chat","event-1",{"by":"u1","seq":3}]',
    "reread_chat": b'["q",17,"node-b","reread_chat","event-1",{}]',
    "remove_member": (
        b'["q",18,"node-b","remove_member","event-1",{"by":"u1","user":"u2","ban":true}]'
    ),
    "reply_ok": b'["a",7,"ok",{"chat_length":2,"seq":5,"epoch":3,"state":null}]',
    "reply_refused": b'["a",12,"refused",["forbidden"]]',
    "reply_not_owner": b'["a",13,"not_owner",null]',
    "chat": (
        b'["n","chat","event-1",{"user":"u1","name":"bob","image":"","text":"hi \\"there\\" ]["}]'
    ),
    "chat_acked": (
        b'["n","chat","event-1",{"user":"u1","name":"bob","image":"","text":"hi","id":"c-1",'
        b'"key":"node-b-1"}]'
    ),
    "chat_forwarded": (
        b'["n","chat","event-1",{"user":"u1","name":"bob","image":"","text":"hi","id":"c-1",'
        b'"forwarded":1}]'
    ),
    "leave": b'["n","leave","event-1",{"key":"node-b-1"}]',
    "sync": (
        b'["n","sync","event-1",{"gateway":"node-b","members":[["node-b-1","u1","bob",""],'
        b'["node-b-2","u2","ann","img",2]]}]'
    ),
    "activate": b'["n","activate","event-1",{}]',
    "created": b'["n","created","event-1",{"name":"party","x":1.5,"y":-2.25}]',
    "moved": b'["n","moved","event-1",{"x":3.0,"y":4}]',
    "closed": b'["n","closed","event-1",{}]',
    "account_deleted": b'["n","account_deleted","",{"user":"u1"}]',
    "banned": b'["n","banned","event-1",{"user":"u2"}]',
    "counted": b'["n","counted","event-1",{"count":12}]',
    "left": b'["n","left","",{"node":"node-a"}]',
}

MESSAGES: dict[str, protocol.EventMessage | Request | Answer | Notice] = {
    "frames": Frames("node-a", 3, 9, [Shown(4, 'chatMessage/{"message":"привет"}'),
                                      Shown(5, "chatMessage/{}", 1),
                                      Shown(None, "membersLeft/[]", 3),
                                      Shown(None, "ack/{}", 2, "node-b-7"),
                                      Shown(None, "closeEvent/", 0, "node-b-8")]),
    "hello": Hello("node-a", 3, 10, 42),
    "handover": Handover("node-a", 3, 11),
    "close_all": CloseAll("node-a", 3, 12, 4000),
    "close_sockets": CloseSockets("node-a", 3, 13, 4003, ["node-b-1", "node-b-7"]),
    "join_v1": Request(7, "node-b", protocol.Join("u1", "Лёша", "", "node-b-1"), "event-1"),
    "join_v2": Request(8, "node-b", protocol.Join("u1", "Лёша", "img", "node-b-2", 2),
                       "event-1"),
    "snapshot": Request(9, "node-b", protocol.Snapshot(), "event-1"),
    "position": Request(10, "node-b", protocol.Position(), "event-1"),
    "members": Request(11, "node-b", protocol.Members(), "event-1"),
    "update": Request(12, "node-b", protocol.Update("u1", "street 2", 55.755826, 37.6173),
                      "event-1"),
    "add_media": Request(13, "node-b", protocol.AddMedia("u1", "m1", "image/png"), "event-1"),
    "remove_media": Request(14, "node-b", protocol.RemoveMedia("u1", "m1"), "event-1"),
    "close": Request(15, "node-b", protocol.Close("u1"), "event-1"),
    "remove_chat": Request(16, "node-b", protocol.RemoveChat("u1", 3), "event-1"),
    "reread_chat": Request(17, "node-b", protocol.RereadChat(), "event-1"),
    "remove_member": Request(18, "node-b", protocol.RemoveMember("u1", "u2", True), "event-1"),
    "reply_ok": Answer(7, "ok", {"chat_length": 2, "seq": 5, "epoch": 3, "state": None}),
    "reply_refused": Answer(12, "refused", ["forbidden"]),
    "reply_not_owner": Answer(13, "not_owner", None),
    "chat": Notice(protocol.Chat("u1", "bob", "", 'hi "there" ]['), "event-1"),
    "chat_acked": Notice(protocol.Chat("u1", "bob", "", "hi", "c-1", "node-b-1"), "event-1"),
    "chat_forwarded": Notice(protocol.Chat("u1", "bob", "", "hi", "c-1", forwarded=1),
                             "event-1"),
    "leave": Notice(protocol.Leave("node-b-1"), "event-1"),
    "sync": Notice(protocol.Sync("node-b", [SyncedSocket("node-b-1", "u1", "bob", ""),
                                            SyncedSocket("node-b-2", "u2", "ann", "img", 2)]),
                   "event-1"),
    "activate": Notice(protocol.Activate(), "event-1"),
    "created": Notice(protocol.Created("party", 1.5, -2.25), "event-1"),
    "moved": Notice(protocol.Moved(3.0, 4), "event-1"),
    "closed": Notice(protocol.Closed(), "event-1"),
    "account_deleted": Notice(protocol.AccountDeleted("u1"), ""),
    "banned": Notice(protocol.Banned("u2"), "event-1"),
    "counted": Notice(protocol.Counted(12), "event-1"),
    "left": Notice(protocol.Left("node-a"), ""),
}


def test_every_kind_and_every_operation_has_a_literal() -> None:
    bodies = [json.loads(data) for data in WIRE.values()]
    assert {body[0] for body in bodies} == {"f", "h", "v", "x", "k", "q", "a", "n"}
    written = ({body[3] for body in bodies if body[0] == "q"}
               | {body[1] for body in bodies if body[0] == "n"})
    assert written == {op.op for op in (*get_args(protocol.RequestOp),
                                        *get_args(protocol.NoticeOp))}


@pytest.mark.parametrize("name", list(WIRE))
def test_each_message_is_written_as_the_nodes_deployed_write_it(name: str) -> None:
    assert encode(MESSAGES[name]) == WIRE[name]


@pytest.mark.parametrize("name", list(WIRE))
def test_each_message_the_nodes_deployed_write_reads_as_its_typed_value(name: str) -> None:
    assert decode(WIRE[name]) == MESSAGES[name]


def test_a_batch_the_nodes_deployed_write_reads_as_its_messages() -> None:
    names = ["join_v1", "chat", "reply_ok", "sync"]
    assert decode_all(encode_batch([WIRE[name] for name in names])) == [
        MESSAGES[name] for name in names]


@pytest.mark.parametrize("x", [1e16, 1e-05, 1.7976931348623157e308])
def test_a_float_in_exponent_form_is_written_another_way_and_read_the_same_both_ways(
        x: float) -> None:
    """The one difference: Python's json wrote `1e+16` and `1e-05`, msgspec writes `1e16` and
    `1e-5`. Both are JSON for the same double; each side reads the other's to the same value
    (json.loads stands for a node of the old version)."""
    moved = Notice(protocol.Moved(x, 2.5), "event-1")
    old = json.dumps(["n", "moved", "event-1", {"x": x, "y": 2.5}],
                     separators=(",", ":")).encode()
    assert encode(moved) != old
    assert decode(old) == moved
    assert json.loads(encode(moved)) == json.loads(old)
