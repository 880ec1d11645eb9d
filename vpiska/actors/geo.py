"""Where the open events are: the map index `events/range` is answered from, without the store.

Entries are kept sorted by x, so a rectangle query bisects to the x band and filters y; results
come out oldest first, the order the older backend's store returned them in.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools

from vpiska.domain import Coordinates


@dataclasses.dataclass
class Spot:
    event_id: str
    name: str
    coordinates: Coordinates
    age: int  # smaller is older


class MapIndex:
    def __init__(self) -> None:
        self._spots: dict[str, Spot] = {}
        self._by_x: list[tuple[float, int, str]] = []
        self._ages = itertools.count()

    def __len__(self) -> int:
        return len(self._spots)

    def put(self, event_id: str, name: str, coordinates: Coordinates) -> None:
        """Add an event (events must be put oldest first); one already here stays as it is."""
        if event_id in self._spots:
            return
        spot = Spot(event_id, name, coordinates, next(self._ages))
        self._spots[event_id] = spot
        bisect.insort(self._by_x, (coordinates.x, spot.age, event_id))

    def replace(self, events: list[tuple[str, str, Coordinates]]) -> None:
        """Make the index hold exactly `events` (oldest first), as a fresh read of the store."""
        self._spots.clear()
        self._by_x.clear()
        for event_id, name, coordinates in events:
            self.put(event_id, name, coordinates)

    def event_ids(self) -> list[str]:
        return list(self._spots)

    def move(self, event_id: str, coordinates: Coordinates) -> None:
        """Move an event; an event not in the index (closed meanwhile) is left out."""
        spot = self._spots.get(event_id)
        if spot is None:
            return
        self._by_x.remove((spot.coordinates.x, spot.age, event_id))
        spot.coordinates = coordinates
        bisect.insort(self._by_x, (coordinates.x, spot.age, event_id))

    def remove(self, event_id: str) -> None:
        spot = self._spots.pop(event_id, None)
        if spot is not None:
            self._by_x.remove((spot.coordinates.x, spot.age, event_id))

    def within(self, x_low: float, x_high: float, y_low: float, y_high: float) -> list[Spot]:
        """Spots with x in [x_low, x_high] and y in [y_low, y_high], oldest first."""
        start = bisect.bisect_left(self._by_x, (x_low, -1, ""))
        found = []
        for x, _, event_id in itertools.islice(self._by_x, start, None):
            if x > x_high:
                break
            spot = self._spots[event_id]
            if y_low <= spot.coordinates.y <= y_high:
                found.append(spot)
        found.sort(key=lambda spot: spot.age)
        return found
