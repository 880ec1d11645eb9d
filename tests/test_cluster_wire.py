"""The bytes nodes say to each other today (vpiska/cluster/protocol.py), one literal per message
kind and per operation, as the JSON encoder wrote them: any new codec must write the same bytes
and read these back, or a rolling deploy splits the cluster."""

from __future__ import annotations

import pytest

from vpiska.cluster.protocol import (
    CloseAll,
    CloseSockets,
    Frames,
    Handover,
    Hello,
    Notice,
    Reply,
    Request,
    Shown,
    encode,
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

MESSAGES: dict[
    str, Frames | Hello | Handover | CloseAll | CloseSockets | Request | Reply | Notice
] = {
    "frames": Frames(
        "node-a",
        3,
        9,
        [
            Shown(4, 'chatMessage/{"message":"привет"}'),
            Shown(5, "chatMessage/{}", 1),
            Shown(None, "membersLeft/[]", 3),
            Shown(None, "ack/{}", 2, "node-b-7"),
            Shown(None, "closeEvent/", 0, "node-b-8"),
        ],
    ),
    "hello": Hello("node-a", 3, 10, 42),
    "handover": Handover("node-a", 3, 11),
    "close_all": CloseAll("node-a", 3, 12, 4000),
    "close_sockets": CloseSockets("node-a", 3, 13, 4003, ["node-b-1", "node-b-7"]),
    "join_v1": Request(
        7,
        "node-b",
        "join",
        "event-1",
        {"user": "u1", "name": "Лёша", "image": "", "key": "node-b-1"},
    ),
    "join_v2": Request(
        8,
        "node-b",
        "join",
        "event-1",
        {"user": "u1", "name": "Лёша", "image": "img", "key": "node-b-2", "v": 2},
    ),
    "snapshot": Request(9, "node-b", "snapshot", "event-1", {}),
    "position": Request(10, "node-b", "position", "event-1", {}),
    "members": Request(11, "node-b", "members", "event-1", {}),
    "update": Request(
        12,
        "node-b",
        "update",
        "event-1",
        {"by": "u1", "address": "street 2", "x": 55.755826, "y": 37.6173},
    ),
    "add_media": Request(
        13, "node-b", "add_media", "event-1", {"by": "u1", "id": "m1", "content_type": "image/png"}
    ),
    "remove_media": Request(
        14, "node-b", "remove_media", "event-1", {"by": "u1", "media_id": "m1"}
    ),
    "close": Request(15, "node-b", "close", "event-1", {"by": "u1"}),
    "remove_chat": Request(16, "node-b", "remove_chat", "event-1", {"by": "u1", "seq": 3}),
    "reread_chat": Request(17, "node-b", "reread_chat", "event-1", {}),
    "remove_member": Request(
        18, "node-b", "remove_member", "event-1", {"by": "u1", "user": "u2", "ban": True}
    ),
    "reply_ok": Reply(7, "ok", {"chat_length": 2, "seq": 5, "epoch": 3, "state": None}),
    "reply_refused": Reply(12, "refused", ["forbidden"]),
    "reply_not_owner": Reply(13, "not_owner", None),
    "chat": Notice(
        "chat", "event-1", {"user": "u1", "name": "bob", "image": "", "text": 'hi "there" ]['}
    ),
    "chat_acked": Notice(
        "chat",
        "event-1",
        {"user": "u1", "name": "bob", "image": "", "text": "hi", "id": "c-1", "key": "node-b-1"},
    ),
    "chat_forwarded": Notice(
        "chat",
        "event-1",
        {"user": "u1", "name": "bob", "image": "", "text": "hi", "id": "c-1", "forwarded": 1},
    ),
    "leave": Notice("leave", "event-1", {"key": "node-b-1"}),
    "sync": Notice(
        "sync",
        "event-1",
        {
            "gateway": "node-b",
            "members": [["node-b-1", "u1", "bob", ""], ["node-b-2", "u2", "ann", "img", 2]],
        },
    ),
    "activate": Notice("activate", "event-1", {}),
    "created": Notice("created", "event-1", {"name": "party", "x": 1.5, "y": -2.25}),
    "moved": Notice("moved", "event-1", {"x": 3.0, "y": 4}),
    "closed": Notice("closed", "event-1", {}),
    "account_deleted": Notice("account_deleted", "", {"user": "u1"}),
    "banned": Notice("banned", "event-1", {"user": "u2"}),
    "counted": Notice("counted", "event-1", {"count": 12}),
    "left": Notice("left", "", {"node": "node-a"}),
}


@pytest.mark.parametrize("name", list(WIRE))
def test_each_message_is_written_as_the_nodes_deployed_write_it(name: str) -> None:
    assert encode(MESSAGES[name]) == WIRE[name]
