"""The OpenAPI 3.0 document of the wire contract (`../shared/API.md`), served at /swagger/doc.json.

Written out here rather than derived from the handlers: they read bodies leniently (a field of the
wrong type is a validation code, never a 400), so the contract lives in API.md, not in types a
framework could introspect. Two tests hold it to the code: tests/test_openapi.py compares its
operations with the app's routes both ways, and tests/test_fuzz.py has schemathesis check every
answer of a running server against it. Error codes come from `ErrorCode` itself.

OpenAPI 3.0 (not 3.1) because the Swagger UI we ship renders 3.0.
"""

from __future__ import annotations

from typing import Any

from vpiska.domain import UUID4
from vpiska.errors import ErrorCode

Schema = dict[str, Any]

# Routes the document leaves out on purpose, with the reason (tests/test_openapi.py reads this).
_DOCS = "the documentation's own files (vpiska/http/swagger.py) are not part of the API"
UNDOCUMENTED = {
    ("GET", "/swagger/"): _DOCS,
    ("GET", "/swagger/doc.json"): _DOCS,
    ("GET", "/swagger/swagger-initializer.js"): _DOCS,
    ("GET", "/swagger/<asset>"): _DOCS,
}

NULL: Schema = {"nullable": True, "enum": [None], "description": "always null"}
TEXT: Schema = {"type": "string"}
ID: Schema = {"type": "string", "format": "uuid", "pattern": UUID4.pattern,
              "example": "3fa85f64-5717-4562-b3fc-2c963f66afa6"}
OPTIONAL_ID: Schema = {**ID, "nullable": True}
PHONE: Schema = {"type": "string", "pattern": "^[0-9]{10}$", "example": "9001234567"}
PASSWORD: Schema = {"type": "string", "minLength": 6, "format": "password", "example": "secret1"}
TOKEN: Schema = {"type": "string", "description": "JWT (HS256) for `Authorization: Bearer`"}
UPLOAD: Schema = {"type": "string", "format": "binary"}

REQUEST_ID_HEADER = {
    "X-Request-Id": {
        "description": "The request's id, as sent by the client (if it was a short token) or "
                       "made by the server; every log line about the request carries it.",
        "schema": {"type": "string"},
    },
}


# vpiska/http/media.py: how stored bytes are served.
DOWNLOAD_HEADERS = {
    "X-Content-Type-Options": {
        "description": "Always `nosniff`: a browser takes the stored type as it is.",
        "required": True, "schema": {"type": "string", "enum": ["nosniff"]},
    },
    "Content-Disposition": {
        "description": "`attachment` for every type that is not shown inline.",
        "schema": {"type": "string", "enum": ["attachment"]},
    },
    "Content-Security-Policy": {
        "description": "Sent with `attachment`: opened anyway, the file runs nothing.",
        "schema": {"type": "string", "enum": ["sandbox; default-src 'none'"]},
    },
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def record(**fields: Schema) -> Schema:
    """An object whose every field is always present (the server never omits a key)."""
    return {"type": "object", "required": list(fields), "properties": fields,
            "additionalProperties": False}


def body(**fields: Schema) -> Schema:
    return {"type": "object", "properties": fields}


SCHEMAS: dict[str, Schema] = {
    "ErrorCode": {"type": "string", "enum": [str(code) for code in ErrorCode]},
    "Error": record(errorCode=ref("ErrorCode")),
    "Failure": {
        **record(isSuccess={"type": "boolean", "enum": [False]},
                 errors={"type": "array", "minItems": 1, "items": ref("Error")},
                 result=NULL),
        "description": "A refused request: every failing code, in the endpoint's order.",
    },
    "Coordinates": record(x={"type": "number"}, y={"type": "number"}),
    "LoginResponse": record(id=ID, name=TEXT, phone=TEXT, imageId=OPTIONAL_ID,
                            eventId=OPTIONAL_ID, accessToken=TOKEN),
    "AccessToken": record(accessToken=TOKEN),
    "ImageSet": record(imageId=ID, accessToken=TOKEN),
    "EventMedia": record(id=ID, contentType=TEXT),
    "ChatMessage": record(userId=ID, userName=TEXT, userImageId=TEXT, message=TEXT),
    "PresentUser": record(userId=ID, userName=TEXT, userImageId=TEXT),
    "Members": record(users={"type": "array", "items": ref("PresentUser")}),
    # A line as v2 shows it (`&v=2` sockets, events/chat): its place and when it was stored.
    "ChatLine": record(userId=ID, userName=TEXT, userImageId=TEXT, message=TEXT,
                       seq={"type": "integer", "minimum": 1},
                       sentAt={"type": "string", "format": "date-time", "nullable": True,
                               "example": "2026-12-07T10:00:00.123Z"}),
    "ChatPage": record(messages={"type": "array", "items": ref("ChatLine")},
                       hasMore={"type": "boolean"}),
    "EventResponse": record(
        id=ID, ownerId=ID, name=TEXT, address=TEXT, coordinates=ref("Coordinates"),
        usersCount={"type": "integer", "minimum": 0},
        media={"type": "array", "items": ref("EventMedia")},
        chatMessages={"type": "array", "items": ref("ChatMessage")},
    ),
    "EventSpot": record(id=ID, name=TEXT, usersCount={"type": "integer", "minimum": 0},
                        coordinates=ref("Coordinates")),
    "MediaMetadata": record(id=ID, name=TEXT, size={"type": "integer", "minimum": 0},
                            contentType=TEXT),
    "Health": record(status=TEXT),
}


def envelope(result: Schema) -> Schema:
    """API.md's envelope: `{isSuccess, errors, result}`, a success carrying `result` or a
    Failure."""
    success = record(isSuccess={"type": "boolean", "enum": [True]}, errors=NULL, result=result)
    return {"oneOf": [success, ref("Failure")]}


def answer(description: str, content: dict[str, Any] | None = None, *,
           request_id: bool = True, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if request_id or headers:
        response["headers"] = {**(REQUEST_ID_HEADER if request_id else {}), **(headers or {})}
    if content is not None:
        response["content"] = content
    return response


def json_answer(result: Schema, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return answer("The envelope (HTTP 200 for refusals too, as the older backend answered: "
                  "read `isSuccess`).", {"application/json": {"schema": envelope(result)}},
                  headers=headers)


# vpiska/http/errors.py: sent with TooManyRequests.
RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "With `TooManyRequests`: whole seconds until an attempt may pass.",
        "schema": {"type": "integer", "minimum": 1},
    },
}


UNROUTED = answer("The id holds a `/` or is empty, so no endpoint serves the path.",
                  {"application/json": {"schema": ref("Failure")}})
LOCKED: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def json_operation(summary: str, request: Schema, result: Schema, *, tag: str,
                   locked: bool = False, description: str = "",
                   example: dict[str, Any] | None = None,
                   headers: dict[str, Any] | None = None) -> dict[str, Any]:
    media_type: dict[str, Any] = {"schema": request}
    if example is not None:  # Swagger UI's Try it out starts from it
        media_type["example"] = example
    operation: dict[str, Any] = {
        "tags": [tag], "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": media_type}},
        "responses": {"200": json_answer(result, headers)},
    }
    if description:
        operation["description"] = description
    if locked:
        operation["security"] = LOCKED
    return operation


def upload_operation(summary: str, form: Schema, result: Schema, *, tag: str,
                     locked: bool) -> dict[str, Any]:
    operation = json_operation(summary, {}, result, tag=tag, locked=locked)
    operation["requestBody"] = {"required": True,
                                "content": {"multipart/form-data": {"schema": form}}}
    operation["description"] = (
        "Over MAX_UPLOAD_BYTES → `PayloadTooLarge`; without the file field → `InternalError`. "
        "The file part's Content-Type is stored if it is a well-formed media type, else "
        "`application/octet-stream`; its file name is stored as valid text (a control "
        "character or undecodable byte becomes U+FFFD), at most 255 characters.")
    return operation


def path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": ID,
            "description": "A media id; not a UUID v4 → 400 (download) or InvalidIdFormat."}


SOCKET_DESCRIPTION = """\
A WebSocket, not a plain GET: connect with a WebSocket client (Swagger UI's *Try it out* sends a
plain GET, which is answered 426). The token may come as `accessToken` or as
`Authorization: Bearer`. The handshake is refused before the upgrade with an empty body.

Frames from the server (text, `prefix/payload`):

- `eventUpdated/{"eventId","name","address","usersCount","coordinates":{"x","y"}}`: the
  event changed, or a member joined or left;
- `chatMessage/{"userId","userName","userImageId","message"}`: a member wrote in the chat
  (the sender gets it too);
- `mediaAdded/{"id","contentType"}`, `mediaRemoved/<mediaId>`: the owner attached or removed
  media;
- `closeEvent/`: the event closed; the server then closes the socket (1000).

Frames from the client: `chatMessage/<text>`; other prefixes are ignored.

`since=n`: the client already has the first n chat lines; it gets lines n, n+1, … first.

`v=2` opts in to the room features old clients never see: `chatMessage` adds `"seq"` and
`"sentAt"`; the client may send `chat/{"id","text"}` and gets `ack/{"id","seq"}` once the line is
stored or `nack/{"id","reason"}` (`rateLimited`, `tooLong`, `empty`, `malformed`), a resent id
being stored once; `presence/{"users":[…]}` once, then `membersJoined/[…]` and
`membersLeft/["<userId>",…]`; `chatRemoved/<seq>` when the host erases a line.

Close codes: 1000 event closed, 1001 server shutting down, 1002/1007/1009 malformed, non-UTF-8
or oversize frame, 1003 binary frame, 1011 the event's room failed, 1013 the event's room is
overloaded (try again later), 4008 slow consumer (rejoin with `since`), 4009 chat flooding.
4003 removed by the host (`events/members/remove`), 4004 account deleted (`users/delete`).
"""

USERS, EVENTS, MEDIA, LIVE, OPERATIONS = "users", "events", "media", "live room", "operations"

PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/users/create": {"post": json_operation(
        "Sign up", body(name=TEXT, phone=PHONE, password=PASSWORD, confirmPassword=PASSWORD),
        ref("LoginResponse"), tag=USERS, headers=RETRY_AFTER_HEADER,
        example={"name": "ann", "phone": "9001234567", "password": "secret1",
                 "confirmPassword": "secret1"},
        description="Codes in order: NameIsEmpty; PhoneIsEmpty or PhoneRegexInvalid; "
                    "PasswordIsEmpty or PasswordLengthInvalid; ConfirmPasswordInvalid. Then "
                    "TooManyRequests over the address's rate (SIGNIN_RATE_PER_MINUTE), with "
                    "`Retry-After`; then NameAlreadyUse, PhoneAlreadyUse or "
                    "NameAndPhoneAlreadyUse.")},
    "/api/v1/users/login": {"post": json_operation(
        "Log in", body(phone=PHONE, password=PASSWORD), ref("LoginResponse"), tag=USERS,
        headers=RETRY_AFTER_HEADER,
        example={"phone": "9001234567", "password": "secret1"},
        description="UserNotFound for an unknown phone, InvalidPassword for a wrong password. "
                    "TooManyRequests (with `Retry-After`, in seconds) over the address's rate "
                    "(SIGNIN_RATE_PER_MINUTE), or for a phone that had 5 wrong passwords in "
                    "the last 15 minutes, from any address; no password is checked then.")},
    "/api/v1/users/update": {"post": json_operation(
        "Change name and/or phone", body(name=TEXT, phone=PHONE), ref("AccessToken"),
        tag=USERS, locked=True,
        description="Empty fields are left as they are; the phone is validated only if given. "
                    "Answers a fresh token carrying the new name.")},
    "/api/v1/users/password/change": {"post": json_operation(
        "Change password", body(password=PASSWORD, confirmPassword=PASSWORD),
        ref("AccessToken"), tag=USERS, locked=True)},
    "/api/v1/users/delete": {"post": json_operation(
        "Delete the caller's account for good", body(password=PASSWORD), NULL, tag=USERS,
        locked=True, headers=RETRY_AFTER_HEADER, example={"password": "your-password"},
        description="PasswordIsEmpty; InvalidPassword (counted like a wrong login: "
                    "TooManyRequests after 5 in 15 minutes). Closes the caller's open event "
                    "(`closeEvent/`), closes every socket of the account with 4004, deletes "
                    "the account and its image, and empties userName and userImageId of its "
                    "chat lines everywhere. The token stops working; the name and phone are "
                    "free at once.")},
    "/api/v1/users/media/set": {"post": upload_operation(
        "Set the avatar", record(image=UPLOAD), ref("ImageSet"), tag=USERS, locked=True)},
    "/api/v1/events/create": {"post": json_operation(
        "Open an event", body(name=TEXT, address=TEXT, coordinates=ref("Coordinates")),
        ref("EventResponse"), tag=EVENTS, locked=True,
        example={"name": "party", "address": "street 1", "coordinates": {"x": 10, "y": 20}},
        description="NameIsEmpty, AddressIsEmpty, CoordinatesIsEmpty; OwnerAlreadyHasEvent if "
                    "the caller already owns an open event.")},
    "/api/v1/events/get": {"post": json_operation(
        "Read an open event", body(eventId=ID), ref("EventResponse"), tag=EVENTS,
        description="EventNotFound for an unknown or closed event.")},
    "/api/v1/events/members": {"post": json_operation(
        "Who is in an event's live room", body(eventId=ID), ref("Members"), tag=EVENTS,
        description="Each user connected to the event's WebSocket now, once, in the order "
                    "they arrived (`userImageId` is \"\" without an image): the list a v2 "
                    "socket gets as `presence/`. EventNotFound for an unknown or closed "
                    "event.")},
    "/api/v1/events/range": {"post": json_operation(
        "Open events in a map rectangle",
        body(coordinates=ref("Coordinates"), horizontalRange={"type": "number"},
             verticalRange={"type": "number"}),
        {"type": "array", "items": ref("EventSpot")}, tag=EVENTS,
        example={"coordinates": {"x": 10, "y": 20}, "horizontalRange": 100,
                 "verticalRange": 100},
        description="Events with x in [cx − h/2, cx + h/2] and y in [cy − v/2, cy + v/2], "
                    "oldest first.")},
    "/api/v1/events/update": {"post": json_operation(
        "Move an event", body(eventId=ID, address=TEXT, coordinates=ref("Coordinates")), NULL,
        tag=EVENTS, locked=True, description="Owner only; members get `eventUpdated`.")},
    "/api/v1/events/close": {"post": json_operation(
        "Close an event", body(eventId=ID), NULL, tag=EVENTS, locked=True,
        description="Owner only; members get `closeEvent/` and are disconnected.")},
    "/api/v1/events/chat": {"post": json_operation(
        "Read the chat in pages",
        body(eventId=ID, before={"type": "integer", "minimum": 1},
             limit={"type": "integer", "minimum": 1, "maximum": 200, "default": 50}),
        ref("ChatPage"), tag=EVENTS,
        example={"eventId": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "limit": 50},
        description="The `limit` lines (1-200, default 50) before line `before` (1-based; "
                    "default: after the last), oldest first; `hasMore` when earlier lines "
                    "exist. LimitInvalid, BeforeInvalid for a value that is not such an "
                    "integer; EventNotFound for an unknown or closed event.")},
    "/api/v1/events/chat/remove": {"post": json_operation(
        "Erase a chat line", body(eventId=ID, seq={"type": "integer", "minimum": 1}), NULL,
        tag=EVENTS, locked=True,
        description="Owner only (UserIsNotOwner). The line's text is erased, its place stays; "
                    "v2 sockets get `chatRemoved/<seq>`, events/get shows an empty message. "
                    "SeqInvalid for a seq that is not an integer >= 1, ChatMessageNotFound "
                    "beyond the last line.")},
    "/api/v1/events/media/add": {"post": upload_operation(
        "Attach media to an event", record(eventId=ID, media=UPLOAD), NULL, tag=EVENTS,
        locked=True)},
    "/api/v1/events/media/remove": {"post": json_operation(
        "Detach media from an event", body(eventId=ID, mediaId=ID), NULL, tag=EVENTS,
        locked=True, description="Owner only; MediaNotFound if not attached.")},
    "/api/v1/events/members/remove": {"post": json_operation(
        "Remove a member (the host)", body(eventId=ID, userId=ID, ban={"type": "boolean"}),
        NULL, tag=EVENTS, locked=True,
        example={"eventId": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                 "userId": "3fa85f64-5717-4562-b3fc-2c963f66afa7", "ban": False},
        description="Owner only (UserIsNotOwner); codes of eventId, then of userId, then "
                    "BanInvalid (`ban` given but not a boolean); EventNotFound; "
                    "OwnerCannotBeRemoved for the owner himself. The user's sockets to the "
                    "event close with 4003 on every node (a user not connected: nothing to "
                    "close). With `ban: true` their handshakes to the event get 403 until it "
                    "closes; without, they may rejoin. A ban is not lifted.")},
    "/api/v1/media": {"post": upload_operation(
        "Upload a file", record(file=UPLOAD), ID, tag=MEDIA, locked=False)},
    "/api/v1/media/{media_id}": {
        "parameters": [path_id("media_id")],
        "get": {
            "tags": [MEDIA], "summary": "Download a file",
            "responses": {
                "200": answer("The bytes, with the Content-Type they were stored with. Raster "
                              "images (JPEG, PNG, APNG, GIF, WebP, AVIF, BMP), audio, video "
                              "and plain text are served inline; every other type (HTML, SVG, "
                              "XML, JavaScript, PDF, unknown, …) as a sandboxed attachment.",
                              {"*/*": {"schema": UPLOAD}}, headers=DOWNLOAD_HEADERS),
                "400": answer("The id is not a UUID v4 (empty body).",
                              {"text/html": {"schema": {"type": "string", "maxLength": 0}}}),
                "404": answer("No such file (empty body), or no endpoint serves the path "
                              "(the NotFound envelope).",
                              {"text/html": {"schema": {"type": "string", "maxLength": 0}},
                               "application/json": {"schema": ref("Failure")}}),
            },
        },
        "delete": {"tags": [MEDIA], "summary": "Delete a file",
                   "description": "InvalidIdFormat for an id that is not a UUID v4; "
                                  "MediaNotFound for an unknown file; MediaInUse while an event "
                                  "(open or closed) lists the file or a user's image is it. An "
                                  "event's media is detached with `events/media/remove` first, "
                                  "a user's image by setting another.",
                   "responses": {"200": json_answer(NULL), "404": UNROUTED}},
    },
    "/api/v1/media/metadata/{media_id}": {
        "parameters": [path_id("media_id")],
        "get": {"tags": [MEDIA], "summary": "A file's metadata",
                "responses": {"200": json_answer(ref("MediaMetadata")), "404": UNROUTED}},
    },
    "/api/v1/websockets/event": {"get": {
        "tags": [LIVE], "summary": "Join an event's live room (WebSocket)",
        "description": SOCKET_DESCRIPTION,
        "x-websocket": True,
        "parameters": [
            {"name": "accessToken", "in": "query", "schema": TOKEN,
             "description": "The member's token (or send `Authorization: Bearer`)."},
            {"name": "eventId", "in": "query", "required": True, "schema": ID},
            {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0},
             "description": "Chat lines the client already has."},
            {"name": "v", "in": "query", "schema": {"type": "integer", "enum": [1, 2]},
             "description": "2 opts in to the room features above; absent or 1: the older "
                            "backend's frames."},
        ],
        "responses": {
            "101": answer("Switching Protocols: the socket is open; frames as described.",
                          request_id=False),
            "400": answer("`eventId`, `since` or `v` is malformed."),
            "401": answer("The token is missing or invalid."),
            "403": answer("The host banned this user from the event (until it closes)."),
            "404": answer("The event is unknown or closed."),
            "426": answer("A plain HTTP request, not a WebSocket handshake."),
            "503": answer("The event's room has failed; it is served again after a restart."),
        },
    }},
    "/health": {"get": {
        "tags": [OPERATIONS], "summary": "The older backend's health check: 200, empty body",
        "responses": {"200": answer("Serving (nothing else is checked).")},
    }},
    "/healthz": {"get": {
        "tags": [OPERATIONS], "summary": "Liveness: the process serves requests",
        "responses": {"200": json_answer(ref("Health"))},
    }},
    "/readyz": {"get": {
        "tags": [OPERATIONS], "summary": "Readiness: the store answers in time",
        "description": "503 when the store did not answer a ping within "
                       "READY_TIMEOUT_SECONDS, or failed it.",
        "responses": {
            "200": json_answer(ref("Health")),
            "503": answer("The store is not ready.",
                          {"application/json": {"schema": ref("Failure")}}),
        },
    }},
    "/metrics": {"get": {
        "tags": [OPERATIONS], "summary": "Prometheus metrics (text exposition format)",
        "responses": {"200": answer("Metrics.", {"text/plain": {"schema": TEXT}})},
    }},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "vpiska",
        "version": "1",
        "description": "The realtime backend of the vpiska party app. Every JSON answer is the "
                       "envelope `{isSuccess, errors, result}`; refusals are HTTP 200 with "
                       "`isSuccess: false` and their codes, as the older backend answered.",
    },
    "servers": [{"url": "/"}],
    "tags": [{"name": name} for name in (USERS, EVENTS, MEDIA, LIVE, OPERATIONS)],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
    },
}
