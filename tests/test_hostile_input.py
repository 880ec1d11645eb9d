"""What an attacker sends gets the field's code, never a crashed room, a traceback or `Infinity`.

Each case is a value a client controls (a JSON field, a query parameter, a token claim) that
once reached the store or the wire and broke something there (issue 8 of the tracker).
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
import trio
import trio.testing

from tests.helpers.clients import Crowd, host_event, token_for, wait_for_sockets
from tests.helpers.fakes import FaultyStore
from tests.helpers.raw_ws import RawSocket, resource
from tests.helpers.server import Server, port_of
from vpiska import wire
from vpiska.cluster.owner import _identity as remote_identity
from vpiska.domain import new_id
from vpiska.store import Store

CREATE = "/api/v1/events/create"
UPDATE = "/api/v1/events/update"
GET = "/api/v1/events/get"
RANGE = "/api/v1/events/range"
MEMBERS = "/api/v1/events/members"


def strict_json(text: str) -> Any:
    """Parse as a strict client would: NaN and Infinity are not JSON."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} on the wire")

    return json.loads(text, parse_constant=refuse)


async def raw_post(server: Server, path: str, body: str, token: str | None = None) -> Any:
    """POST a body written by hand (json.dumps would refuse what an attacker sends)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = await server.http.post(path, content=body.encode("utf-8", "surrogatepass"),
                                      headers=headers)
    assert response.status_code == 200
    return strict_json(response.text)


def errors(envelope: Any) -> list[str]:
    assert envelope["isSuccess"] is False, envelope
    return [e["errorCode"] for e in envelope["errors"]]


def error_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        pytest.param("address", '"a\\ud800"', "AddressIsEmpty", id="lone-surrogate"),
        pytest.param("x", "1e999", "CoordinatesIsEmpty", id="infinite"),
        pytest.param("x", "1" + "0" * 400, "CoordinatesIsEmpty", id="beyond-any-double"),
        pytest.param("y", "-1e999", "CoordinatesIsEmpty", id="minus-infinite"),
    ],
)
async def test_update_with_a_value_no_store_can_hold_fails_only_that_request(
    server: Server, crowd: Crowd, caplog: pytest.LogCaptureFixture,
    field: str, value: str, code: str,
) -> None:
    caplog.set_level(logging.INFO)
    token, event_id = await host_event(server)
    member = await crowd.join((await token_for(server))[1], event_id)
    address = value if field == "address" else '"street 2"'
    x = value if field == "x" else "1"
    y = value if field == "y" else "2"
    body = (f'{{"eventId": "{event_id}", "address": {address}, '
            f'"coordinates": {{"x": {x}, "y": {y}}}}}')
    for _ in range(6):  # four crashes in a few seconds used to fail the room until restart
        assert errors(await raw_post(server, UPDATE, body, token)) == [code]
    # The room is whole: its member stays, chat flows, the owner can still update and close.
    await member.say("still here")
    await member.wait_for(lambda m: m.chat() == ["still here"])
    await server.ok(UPDATE, {"eventId": event_id, "address": "street 3",
                             "coordinates": {"x": 5, "y": 6}}, token=token)
    await member.wait_for(lambda m: any('"address":"street 3"' in f for f in m.frames))
    event = await server.ok(GET, {"eventId": event_id})
    assert event["address"] == "street 3"
    assert member.close_code is None
    assert not error_records(caplog)


@pytest.mark.parametrize("x", ["1e999", "-1e999", "1" + "0" * 400])
async def test_create_with_a_non_finite_coordinate_is_refused_and_stores_nothing(
    server: Server, x: str
) -> None:
    await host_event(server)
    owner = await server.sign_up("fresh", "9007654321")
    body = f'{{"name": "p", "address": "a", "coordinates": {{"x": {x}, "y": 0}}}}'
    assert errors(await raw_post(server, CREATE, body, owner["accessToken"])) == [
        "CoordinatesIsEmpty"]
    found = await raw_post(server, RANGE, '{"coordinates": {"x": 0, "y": 0}, '
                           '"horizontalRange": 1e300, "verticalRange": 1e300}')
    assert [e["name"] for e in found["result"]] == ["party"]  # only host_event's


async def test_huge_but_finite_numbers_are_kept_and_written_as_json(server: Server) -> None:
    token, event_id = await host_event(server)
    big = 2**63
    await server.ok(UPDATE, {"eventId": event_id, "address": "a",
                             "coordinates": {"x": big, "y": -1e308}}, token=token)
    response = await server.http.post(GET, json={"eventId": event_id})
    event = strict_json(response.text)["result"]
    assert event["coordinates"] == {"x": float(big), "y": -1e308}
    found = await raw_post(server, RANGE, '{"coordinates": {"x": 0, "y": 0}, '
                           '"horizontalRange": 1e308, "verticalRange": 1e308}')
    assert found["result"] == []  # y = -1e308 is outside ±5e307; no bound overflowed
    assert errors(await raw_post(server, RANGE, '{"coordinates": {"x": 0, "y": 0}, '
                                 '"horizontalRange": 1' + "0" * 400 + ', "verticalRange": 1}')
                  ) == ["HorizontalRangeIsEmpty"]


@pytest.mark.parametrize(
    ("body", "codes"),
    [
        pytest.param('{"name": "\\ud800", "phone": "9001234567", "password": "secret1", '
                     '"confirmPassword": "secret1"}', ["NameIsEmpty"], id="name"),
        pytest.param('{"name": "ann", "phone": "9001234567", "password": "secret\\udfff", '
                     '"confirmPassword": "secret\\udfff"}', ["PasswordIsEmpty"], id="password"),
        pytest.param('{"name": "ann", "phone": "\\ud83d9001234567", "password": "secret1", '
                     '"confirmPassword": "secret1"}', ["PhoneRegexInvalid"], id="phone"),
        pytest.param("[" * 30_000, ["InternalError"], id="deeply-nested"),
    ],
)
async def test_sign_up_with_hostile_values_gets_codes_and_no_error_log(
    server: Server, caplog: pytest.LogCaptureFixture, body: str, codes: list[str]
) -> None:
    caplog.set_level(logging.INFO)
    # A lone surrogate in the phone reads as an empty field, so PhoneIsEmpty is also fair;
    # what matters is a code, not a crash.
    got = errors(await raw_post(server, "/api/v1/users/create", body))
    assert got == codes or (codes == ["PhoneRegexInvalid"] and got == ["PhoneIsEmpty"])
    assert not error_records(caplog)
    await server.sign_up()  # still healthy


async def test_profile_update_and_event_create_with_lone_surrogates_get_codes(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    user = await server.sign_up()
    token = user["accessToken"]
    envelope = await raw_post(server, "/api/v1/users/update", '{"name": "\\ud800"}', token)
    assert envelope["isSuccess"] is True  # an empty name is "no change", as documented
    envelope = await raw_post(
        server, CREATE, '{"name": "\\ud800", "address": "\\udc00", '
        '"coordinates": {"x": 1, "y": 2}}', token)
    assert errors(envelope) == ["NameIsEmpty", "AddressIsEmpty"]
    assert not error_records(caplog)


def test_every_encoder_refuses_non_finite_numbers() -> None:
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="JSON compliant"):
            wire.encode({"x": value})


@pytest.mark.parametrize(
    "since", ["%C2%B2", "%D9%A3", "1" * 5001, "-1", "1.5", "%00", "%ED%A0%80"],
    ids=["superscript-two", "arabic-three", "5001-digits", "negative", "fraction", "nul",
         "encoded-surrogate"])
async def test_since_must_be_a_few_ascii_digits(
    server: Server, caplog: pytest.LogCaptureFixture, since: str
) -> None:
    caplog.set_level(logging.INFO)
    _, event_id = await host_event(server)
    _, guest = await token_for(server)
    path = resource(server, guest, event_id) + f"&since={since}"
    assert await RawSocket.handshake_status(port_of(server), path) == 400
    assert not error_records(caplog)
    assert await RawSocket.handshake_status(port_of(server), path[: path.rindex("&")]
                                            + "&since=0") == 101


def forged(server: Server, **claims: Any) -> str:
    """A token signed with the server's key: with the public default key anyone can make one."""
    body = {"ID": new_id(), "Name": "mallory", "ImageID": "", "iss": server.config.jwt_issuer,
            "aud": server.config.jwt_audience,
            "exp": datetime.now(UTC) + timedelta(days=1), **claims}
    return jwt.encode(body, server.config.jwt_key, algorithm="HS256")


async def test_a_well_signed_token_of_a_user_that_does_not_exist_is_refused(
    server: Server
) -> None:
    _, event_id = await host_event(server)
    ghost = forged(server)
    assert await server.codes(CREATE, {"name": "p", "address": "a",
                                       "coordinates": {"x": 1, "y": 1}},
                              token=ghost) == ["unauthorized"]
    assert await RawSocket.handshake_status(
        port_of(server), resource(server, ghost, event_id)) == 401


@pytest.mark.parametrize(
    "claims",
    [{"ID": "not-a-uuid"}, {"ID": 5}, {"Name": "\ud800"}, {"Name": ["x"]}],
    ids=["id-not-uuid", "id-number", "name-surrogate", "name-list"])
async def test_token_claims_are_validated(server: Server, claims: dict[str, Any]) -> None:
    _, event_id = await host_event(server)
    token = forged(server, **claims)
    assert await server.codes(CREATE, {"name": "p", "address": "a",
                                       "coordinates": {"x": 1, "y": 1}},
                              token=token) == ["unauthorized"]
    assert await RawSocket.handshake_status(
        port_of(server), resource(server, token, event_id)) == 401


async def test_an_image_id_claim_that_is_not_text_is_dropped_not_stored(
    server: Server, crowd: Crowd
) -> None:
    user_id, _ = await token_for(server, "eve")
    hostile = forged(server, ID=user_id, Name="eve", ImageID="\udfff")
    _, event_id = await host_event(server)
    member = await crowd.join(hostile, event_id)
    await member.say("hello")
    await member.wait_for(lambda m: m.chat() == ["hello"])
    line = strict_json(next(f for f in member.frames if f.startswith("chatMessage/"))[12:])
    assert line["userImageId"] == ""
    assert line["userId"] == user_id


@pytest.mark.parametrize(("body", "codes"), [
    pytest.param('{"eventId": "\\ud800"}', ["IdIsEmpty"], id="lone-surrogate"),
    pytest.param('{"eventId": 1e999}', ["IdIsEmpty"], id="infinity"),
    pytest.param('{"eventId": {"$ne": null}}', ["IdIsEmpty"], id="operator"),
    pytest.param('{"eventId": "' + "a" * 5_000 + '"}', ["InvalidIdFormat"], id="huge"),
    pytest.param("[]", ["InternalError"], id="not-an-object"),  # as every JSON endpoint
])
async def test_members_of_a_hostile_event_id_is_a_code_and_no_error_log(
    server: Server, caplog: pytest.LogCaptureFixture, body: str, codes: list[str]
) -> None:
    caplog.set_level(logging.INFO)
    assert errors(await raw_post(server, MEMBERS, body)) == codes
    assert not error_records(caplog)


async def test_a_presence_list_shows_a_hostile_image_claim_as_no_image(
    server: Server, crowd: Crowd
) -> None:
    user_id, _ = await token_for(server, "eve")
    hostile = forged(server, ID=user_id, Name="eve", ImageID="\udfff")
    _, event_id = await host_event(server)
    member = await crowd.join(hostile, event_id, v=2)
    await member.wait_for(lambda m: any(f.startswith("presence/") for f in m.frames))
    listed = next(f for f in member.frames if f.startswith("presence/"))
    assert strict_json(listed[9:]) == {"users": [
        {"userId": user_id, "userName": "eve", "userImageId": ""}]}


def test_a_remote_socket_whose_name_is_not_text_is_refused() -> None:
    """Another node's join or sync names its socket's user; a name no wire can carry (a lone
    surrogate, from a node that skipped the token's checks) would break every v2 socket's
    presence list, so the request is refused as malformed."""
    with pytest.raises(ValueError, match="not text"):
        remote_identity(new_id(), "\ud800", "")
    with pytest.raises(ValueError, match="not text"):
        remote_identity(new_id(), "eve", "\udfff")


@pytest.fixture
def wrap_store() -> Callable[[Store], Store]:
    return FaultyStore


@pytest.mark.parametrize("config_overrides", [{"chat_rate_per_second": 1e6, "chat_burst": 10**6}])
async def test_members_whose_connection_broke_are_not_counted_as_slow(
    server: Server, crowd: Crowd
) -> None:
    async def slow_consumers() -> float:
        async with httpx.AsyncClient(base_url=server.url) as http:
            text = (await http.get("/metrics")).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('vpiska_ws_disconnects_total{reason="slow_consumer"}'))

    assert isinstance(server.store, FaultyStore)
    _, event_id = await host_event(server)
    before = await slow_consumers()
    talker = await crowd.join((await token_for(server))[1], event_id)
    doomed = [await RawSocket.connect(port_of(server),
                                      resource(server, (await token_for(server))[1], event_id))
              for _ in range(9)]
    await wait_for_sockets(server, 10)
    # Chat queues up behind a store write that does not return, so the leaves of the phones
    # about to vanish queue behind it too, and the room still delivers to them meanwhile.
    release = server.store.hang("append_chat")
    for i in range(50):
        await talker.say(f"line {i}")
    for raw in doomed:  # the phones vanish: a reset, not a close handshake
        raw.stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
        await raw.stream.aclose()
    await trio.testing.wait_all_tasks_blocked(0.05)  # their sessions have seen the resets
    release.set()
    await talker.wait_for(lambda m: len(m.chat()) == 50)
    await wait_for_sockets(server, 1)
    assert await slow_consumers() == before


@pytest.mark.parametrize("host", ["a..b", ".", "x" * 64 + ".example"])
async def test_a_host_header_that_is_no_host_name_is_a_400_not_a_server_error(
    server: Server, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    caplog.set_level(logging.INFO)
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(server))
    async with stream:
        await stream.send_all(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        answer = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert not error_records(caplog)
    assert (await server.http.get("/healthz")).status_code == 200


# Lines with an identity (API.md, "Opt-in room features").

HOSTILE_SENT_LINES = [
    '{"id":"a","text":"x\\ud800"}', '{"id":"\\udfff","text":"x"}', '{"id":"a","text":1e999}',
    '{"id":"a","text":' + "1" * 5000 + "}", "[" * 60_000, '{"id":{"$gt":""},"text":"x"}',
    '{"id":"a","text":["x"]}', '{"id":null,"text":"x"}', "\x00", '{"id":"a","text":"x"}' * 2,
]


async def test_hostile_v2_lines_get_a_nack_and_no_error(
    server: Server, crowd: Crowd, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    _, event_id = await host_event(server)
    member = await crowd.join((await token_for(server))[1], event_id, v=2)
    for payload in HOSTILE_SENT_LINES:
        await member.ws.send_message("chat/" + payload)
    await member.ws.send_message('chat/{"id":"fine","text":"still a room"}')
    await member.wait_for(lambda m: any(frame.startswith("ack/") for frame in m.frames))
    nacks = [strict_json(frame[5:]) for frame in member.frames if frame.startswith("nack/")]
    assert len(nacks) == len(HOSTILE_SENT_LINES)
    assert {nack["reason"] for nack in nacks} == {"malformed"}
    assert [line.message for line in await server.store.chat(event_id)] == ["still a room"]
    assert error_records(caplog) == []


@pytest.mark.parametrize("body", [
    '{{"eventId":"{e}","limit":1e999}}', '{{"eventId":"{e}","before":-1e999}}',
    '{{"eventId":"{e}","limit":' + "9" * 400 + "}}", '{{"eventId":"{e}","before":"\\ud800"}}',
    '{{"eventId":"{e}\\ud800"}}', '{{"eventId":"{e}","limit":{{"$gt":0}}}}',
])
async def test_hostile_history_requests_get_codes_and_no_error(
    server: Server, caplog: pytest.LogCaptureFixture, body: str,
) -> None:
    caplog.set_level(logging.INFO)
    token, event_id = await host_event(server)
    assert errors(await raw_post(server, "/api/v1/events/chat", body.format(e=event_id))) != []
    removal = body.format(e=event_id).replace('"limit"', '"seq"').replace('"before"', '"seq"')
    assert errors(await raw_post(server, "/api/v1/events/chat/remove", removal, token)) != []
    assert error_records(caplog) == []


REMOVE_MEMBER = "/api/v1/events/members/remove"


@pytest.mark.parametrize(
    ("body", "codes"),
    [
        pytest.param('{"eventId": "E", "userId": "U", "ban": "1"}', ["BanInvalid"],
                     id="ban-as-text"),
        pytest.param('{"eventId": "E", "userId": "U", "ban": 1e999}', ["BanInvalid"],
                     id="ban-infinite"),
        pytest.param('{"eventId": "E", "userId": "U", "ban": {"$ne": 0}}', ["BanInvalid"],
                     id="ban-operator"),
        pytest.param('{"eventId": "E", "userId": "\\ud800", "ban": true}', ["IdIsEmpty"],
                     id="user-lone-surrogate"),
        pytest.param('{"eventId": "E", "userId": ["U"]}', ["IdIsEmpty"], id="user-as-list"),
        pytest.param('{"eventId": {"$gt": ""}, "userId": "U"}', ["IdIsEmpty"],
                     id="event-operator"),
        pytest.param('[1, 2]', ["InternalError"], id="not-an-object"),
    ],
)
async def test_members_remove_with_hostile_values_gets_codes_and_bans_nobody(
    server: Server, crowd: Crowd, caplog: pytest.LogCaptureFixture, body: str,
    codes: list[str],
) -> None:
    token, event_id = await host_event(server)
    user_id, guest = await token_for(server)
    member = await crowd.join(guest, event_id)
    filled = body.replace('"E"', f'"{event_id}"').replace('"U"', f'"{user_id}"')
    assert errors(await raw_post(server, REMOVE_MEMBER, filled, token)) == codes
    assert [r for r in error_records(caplog) if "Traceback" in r] == []
    event = await server.store.event(event_id)
    assert event is not None
    assert event.banned == frozenset()
    await member.say("still here")
    await member.wait_for(lambda m: m.chat() == ["still here"])


@pytest.mark.parametrize("body", [
    pytest.param('{"password": "\\ud800\\udfff-x"}', id="lone-surrogates"),
    pytest.param('{"password": {"$ne": ""}}', id="operator"),
    pytest.param('{"password": 1e999}', id="infinite"),
    pytest.param('{"password": "' + "p" * 10_000 + '"}', id="long"),
])
async def test_users_delete_with_a_hostile_password_deletes_nothing(
    server: Server, caplog: pytest.LogCaptureFixture, body: str
) -> None:
    leaving = await server.sign_up("hostile", "9007770001", "secret1")
    envelope = await raw_post(server, "/api/v1/users/delete", body, leaving["accessToken"])
    assert errors(envelope)[0] in {"PasswordIsEmpty", "InvalidPassword", "PayloadTooLarge"}
    assert error_records(caplog) == []
    assert await server.store.user_by_id(leaving["id"]) is not None
