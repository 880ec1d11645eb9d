"""An old client's whole session, replayed and compared with a recording, byte for byte.

The mobile clients speak the older backend's protocol and must never notice a new server. This
test plays what such a client does (sign up, log in, open an event, join its room from two
phones, chat, update, attach and remove a photo, look the event up, leave, close) and writes
down every answer (status, content type, body) and every frame each socket gets, step by step.
The transcript must equal `tests/golden/old_client_session.txt`.

What varies from run to run is replaced before comparing: ids by a name numbered in order of
first appearance (`<id:1>`), tokens by `<token>` (two issued within one second are the same
bytes, else not). Bodies that are not JSON are shown as Python bytes literals, with the headers
a download is specified by. Runs of identical `eventUpdated` frames
are shown once: a joining socket gets the room's state at once or with the next count
announcement, by design (EVENT_UPDATE_INTERVAL_MS), and the two carry the same bytes.

Each step waits for its own effect on every socket before the next begins, so every frame is
written under the step that caused it. A change to the wire shows up as a diff of the file:
`VPISKA_WRITE_GOLDEN=1` rewrites it, and the diff is reviewed like code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.clients import Crowd, Member
from tests.helpers.server import EVERY_WEBSOCKET_PATH, Server

GOLDEN = Path(__file__).parent / "golden" / "old_client_session.txt"
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TOKEN = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
PHOTO = b"\x89PNG\r\n\x1a\n a photo"
_DOWNLOAD_HEADERS = ("content-length", "x-content-type-options", "content-disposition",
                     "content-security-policy")


class Transcript:
    """What the client saw, as lines, with ids and tokens named in order of appearance."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._names: dict[str, str] = {}  # id: its name
        self._read: dict[str, int] = {}

    def name(self, text: str) -> str:
        def named(match: re.Match[str]) -> str:
            return self._names.setdefault(match.group(0), f"<id:{len(self._names) + 1}>")
        return _ID.sub(named, _TOKEN.sub("<token>", text))

    def step(self, title: str) -> None:
        self.lines.append(f"# {title}")

    def answer(self, method: str, path: str, response: httpx.Response) -> None:
        kind = response.headers.get("content-type")
        if kind == "application/json":
            shown = response.content.decode()
        else:
            headers = {name: response.headers[name] for name in _DOWNLOAD_HEADERS
                       if name in response.headers}
            shown = f"{headers} {response.content!r}"
        self.lines.append(self.name(f"{method} {path} -> {response.status_code} {kind} {shown}"))

    def frames(self, who: str, member: Member) -> None:
        """The frames `member` got since the last call, runs of one eventUpdated once."""
        start = self._read.get(who, 0)
        self._read[who] = len(member.frames)
        previous = None
        for frame in member.frames[start:]:
            if frame == previous and frame.startswith("eventUpdated/"):
                continue
            previous = frame
            self.lines.append(self.name(f"{who} <- {frame}"))


@EVERY_WEBSOCKET_PATH
async def test_an_old_clients_session_is_answered_as_recorded(
    server: Server, crowd: Crowd
) -> None:
    seen = Transcript()

    async def post(path: str, body: object = None, token: str | None = None,
                   **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await server.http.post(path, json=body, headers=headers, **kwargs)
        seen.answer("POST", path, response)
        return response

    async def get(path: str) -> httpx.Response:
        response = await server.http.get(path)
        seen.answer("GET", path, response)
        return response

    def frames() -> None:
        seen.frames("host", host_socket)
        seen.frames("guest", guest_socket)

    seen.step("sign up two users, the second logs in again")
    host = (await post("/api/v1/users/create", {
        "name": "host", "phone": "9001112233", "password": "secret1",
        "confirmPassword": "secret1"})).json()["result"]
    await post("/api/v1/users/create", {
        "name": "guest", "phone": "9004445566", "password": "secret2",
        "confirmPassword": "secret2"})
    guest = (await post("/api/v1/users/login",
                        {"phone": "9004445566", "password": "secret2"})).json()["result"]
    await post("/api/v1/users/create", {"name": "", "phone": "1", "password": "x",
                                        "confirmPassword": "y"})
    await post("/api/v1/users/login", {"phone": "9004445566", "password": "wrong-1"})

    seen.step("the host opens an event")
    event = (await post("/api/v1/events/create", {
        "name": "party", "address": "Lenina 1", "coordinates": {"x": 55.75, "y": 37.5}},
        token=host["accessToken"])).json()["result"]
    event_id = event["id"]
    await post("/api/v1/events/create", {
        "name": "again", "address": "Lenina 2", "coordinates": {"x": 1, "y": 2}},
        token=host["accessToken"])

    seen.step("the host joins the room, then the guest")
    host_socket = await crowd.join(host["accessToken"], event_id)
    guest_socket = await crowd.join(guest["accessToken"], event_id)
    await host_socket.wait_for(lambda m: 2 in m.counts())
    await guest_socket.wait_for(lambda m: 2 in m.counts())
    frames()

    seen.step("both chat")
    await guest_socket.say("hi all")
    await host_socket.wait_for(lambda m: "hi all" in m.chat())
    await host_socket.say("привет, guest")
    for member in (host_socket, guest_socket):
        await member.wait_for(lambda m: "привет, guest" in m.chat())
    frames()

    seen.step("the host moves the event")
    await post("/api/v1/events/update", {
        "eventId": event_id, "address": "Lenina 3", "coordinates": {"x": 55.8, "y": 37.6}},
        token=host["accessToken"])
    await post("/api/v1/events/update", {
        "eventId": event_id, "address": "Lenina 3", "coordinates": {"x": 1, "y": 1}},
        token=guest["accessToken"])
    for member in (host_socket, guest_socket):
        await member.wait_for(lambda m: any("Lenina 3" in f for f in m.frames))
    frames()

    seen.step("the host attaches a photo")
    await post("/api/v1/events/media/add", token=host["accessToken"],
               data={"eventId": event_id}, files={"media": ("photo.png", PHOTO, "image/png")})
    for member in (host_socket, guest_socket):
        await member.wait_for(lambda m: any(f.startswith("mediaAdded/") for f in m.frames))
    frames()
    photo_id = _ID.findall(next(f for f in host_socket.frames if f.startswith("mediaAdded/")))[0]
    await get(f"/api/v1/media/{photo_id}")
    await get(f"/api/v1/media/metadata/{photo_id}")

    seen.step("anyone looks the event up")
    await post("/api/v1/events/get", {"eventId": event_id})
    await post("/api/v1/events/range", {
        "coordinates": {"x": 55.8, "y": 37.6}, "horizontalRange": 1, "verticalRange": 1})
    await post("/api/v1/events/get", {"eventId": "not-an-id"})

    seen.step("the host removes the photo")
    await post("/api/v1/events/media/remove", {"eventId": event_id, "mediaId": photo_id},
               token=host["accessToken"])
    for member in (host_socket, guest_socket):
        await member.wait_for(lambda m: any(f.startswith("mediaRemoved/") for f in m.frames))
    frames()
    await get(f"/api/v1/media/{photo_id}")

    seen.step("the guest leaves")
    await guest_socket.ws.aclose()
    await host_socket.wait_for(lambda m: m.counts()[-1] == 1)
    frames()

    seen.step("the host closes the event")
    await post("/api/v1/events/close", {"eventId": event_id}, token=host["accessToken"])
    await host_socket.wait_closed()
    frames()
    seen.lines.append(f"host socket closed with {host_socket.close_code}")
    await post("/api/v1/events/get", {"eventId": event_id})

    seen.step("the guest renames itself and changes its avatar twice")
    renamed = (await post("/api/v1/users/update", {"name": "guest two"},
                          token=guest["accessToken"])).json()["result"]
    first = (await post("/api/v1/users/media/set", token=renamed["accessToken"],
                        files={"image": ("me.png", PHOTO, "image/png")})).json()["result"]
    await post("/api/v1/users/media/set", token=first["accessToken"],
               files={"image": ("me2.png", PHOTO + b"2", "image/png")})
    await get(f"/api/v1/media/{first['imageId']}")
    await post("/api/v1/users/login", {"phone": "9004445566", "password": "secret2"})

    text = "\n".join(seen.lines) + "\n"
    if os.environ.get("VPISKA_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_the_transcript_names_ids_and_tokens_in_order() -> None:
    seen = Transcript()
    first = "00000000-0000-4000-8000-000000000000"
    second = "11111111-1111-4111-8111-111111111111"
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    assert seen.name(f"{second} {token} {first} {second}") == "<id:1> <token> <id:2> <id:1>"
