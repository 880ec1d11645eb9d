"""`frames.EventUpdates`: the eventUpdated frames a room sends at every join, put together
around `usersCount`, are the text `frames.event_updated` encodes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from vpiska.actors import frames
from vpiska.domain import Coordinates, Event

EVENT = Event(id="e1", owner_id="u1", name="party", address="here",
              coordinates=Coordinates(10.0, -0.5), created_at=datetime(2026, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize("changes", [
    pytest.param({}, id="plain"),
    pytest.param({"name": "вечеринка 🎉", "address": "ул. \"Ленина\", 1\n\\"}, id="escapes"),
    pytest.param({"name": ',"usersCount":0,"coordinates":{"x":1,"y":2}}'}, id="name-mimics-field"),
    pytest.param({"address": '","usersCount":0,'}, id="address-mimics-field"),
    pytest.param({"coordinates": Coordinates(1e-7, 123456.25)}, id="odd-coordinates"),
])
def test_frames_are_the_encoded_text(changes: dict[str, Any]) -> None:
    event = dataclasses.replace(EVENT, **changes)
    updates = frames.EventUpdates()
    for count in (0, 1, 10, 5000, 0):
        assert updates.frame(event, count).text == frames.event_updated(event, count).text


def test_a_changed_event_is_encoded_again() -> None:
    updates = frames.EventUpdates()
    assert updates.frame(EVENT, 3).text == frames.event_updated(EVENT, 3).text
    renamed = dataclasses.replace(EVENT, name="after")
    assert updates.frame(renamed, 3).text == frames.event_updated(renamed, 3).text
    assert updates.frame(EVENT, 4).text == frames.event_updated(EVENT, 4).text
