"""A chat line's frame (vpiska/actors/frames.py) is written by msgspec for speed; clients parse
it as the older backend wrote it, so its text must be what the json module writes."""

from __future__ import annotations

import json

from vpiska.actors import frames
from vpiska.domain import ChatMessage

_REFERENCE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# Every code point but the surrogates (no UTF-8 text holds one), in pieces of this many.
_PIECE = 4096


def _every_code_point() -> list[str]:
    points = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    return ["".join(points[i:i + _PIECE]) for i in range(0, len(points), _PIECE)]


def test_a_chat_frame_is_the_json_modules_text_for_every_code_point() -> None:
    for piece in _every_code_point():
        line = ChatMessage(piece, piece[::-1], piece[:7], piece)
        expected = "chatMessage/" + _REFERENCE(
            {"userId": piece, "userName": piece[::-1], "userImageId": piece[:7],
             "message": piece})
        assert frames.chat_message(line).text == expected
