"""What a v2 client makes of the presence frames it gets (API.md, "Presence"), checking each as
it applies it: no change before the list, no arrival of someone it lists already, no departure
of someone it does not list."""

from __future__ import annotations

import json
from collections.abc import Iterable

PREFIXES = ("presence/", "membersJoined/", "membersLeft/")


class PresenceView:
    def __init__(self) -> None:
        self.users: dict[str, dict[str, str]] | None = None  # user id -> user, once listed
        self.lists = 0  # presence/ frames applied
        self.changes = 0  # membersJoined/ and membersLeft/ frames applied
        self.largest = 0  # characters of the largest presence frame applied
        self._followed = 0  # frames of a growing list already applied (`follow`)

    def follow(self, frames: list[str]) -> None:
        """Apply the frames added to `frames` (a client's list of what it got) since the last
        call."""
        self.apply_all(frames[self._followed:])
        self._followed = len(frames)

    def apply_all(self, frames: Iterable[str]) -> None:
        for frame in frames:
            self.apply(frame)

    def apply(self, frame: str) -> None:
        prefix, _, payload = frame.partition("/")
        if frame.startswith(PREFIXES):
            self.largest = max(self.largest, len(frame))
        if prefix == "presence":
            listed = json.loads(payload)["users"]
            self.users = {user["userId"]: user for user in listed}
            assert len(self.users) == len(listed), f"a user listed twice: {frame[:200]}"
            self.lists += 1
        elif prefix == "membersJoined":
            assert self.users is not None, "a change before the list"
            for user in json.loads(payload):
                assert user["userId"] not in self.users, f"joined, already listed: {user}"
                self.users[user["userId"]] = user
            self.changes += 1
        elif prefix == "membersLeft":
            assert self.users is not None, "a change before the list"
            for user_id in json.loads(payload):
                assert user_id in self.users, f"left, never listed: {user_id}"
                del self.users[user_id]
            self.changes += 1

    @property
    def present(self) -> set[str]:
        assert self.users is not None, "no presence list yet"
        return set(self.users)


def is_presence(frame: str) -> bool:
    return frame.startswith(PREFIXES)
