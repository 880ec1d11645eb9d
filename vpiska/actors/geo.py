"""Where the open events are: the map index `events/range` is answered from, without the store.

Entries are kept sorted by (x, age) in three parallel lists: the sort keys, the y coordinates
and the spots. A rectangle query bisects the keys to the x band and filters the band's ys in one
comprehension over two list slices: on a busy map the band holds ten times the answer, and
looking each candidate up by id cost more than the rest of the request. Results come out
oldest first, the order the older backend's store returned them in.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math

from vpiska.domain import Coordinates


@dataclasses.dataclass
class Spot:
    event_id: str
    name: str
    coordinates: Coordinates
    age: int  # smaller is older


def _age(spot: Spot) -> int:
    return spot.age


class MapIndex:
    def __init__(self) -> None:
        self._spots: dict[str, Spot] = {}
        self._keys: list[tuple[float, int]] = []  # (x, age), sorted
        self._ys: list[float] = []  # the y of the spot at the same position
        self._sorted: list[Spot] = []  # the spot at the same position
        self._ages = itertools.count()

    def __len__(self) -> int:
        return len(self._spots)

    def put(self, event_id: str, name: str, coordinates: Coordinates) -> None:
        """Add an event (events must be put oldest first); one already here stays as it is."""
        if event_id in self._spots:
            return
        spot = Spot(event_id, name, coordinates, next(self._ages))
        self._spots[event_id] = spot
        self._insert(spot)

    def replace(self, events: list[tuple[str, str, Coordinates]]) -> None:
        """Make the index hold exactly `events` (oldest first), as a fresh read of the store."""
        self._spots.clear()
        self._keys.clear()
        self._ys.clear()
        self._sorted.clear()
        for event_id, name, coordinates in events:
            self.put(event_id, name, coordinates)

    def event_ids(self) -> list[str]:
        return list(self._spots)

    def move(self, event_id: str, coordinates: Coordinates) -> None:
        """Move an event; an event not in the index (closed meanwhile) is left out."""
        spot = self._spots.get(event_id)
        if spot is None:
            return
        self._delete(spot)
        spot.coordinates = coordinates
        self._insert(spot)

    def remove(self, event_id: str) -> None:
        spot = self._spots.pop(event_id, None)
        if spot is not None:
            self._delete(spot)

    def within(self, x_low: float, x_high: float, y_low: float, y_high: float) -> list[Spot]:
        """Spots with x in [x_low, x_high] and y in [y_low, y_high], oldest first."""
        start = bisect.bisect_left(self._keys, (x_low, -1))
        end = bisect.bisect_right(self._keys, (x_high, math.inf), lo=start)
        found = [spot for y, spot in zip(self._ys[start:end], self._sorted[start:end],
                                         strict=True) if y_low <= y <= y_high]
        found.sort(key=_age)
        return found

    def _insert(self, spot: Spot) -> None:
        key = (spot.coordinates.x, spot.age)
        at = bisect.bisect_left(self._keys, key)
        self._keys.insert(at, key)
        self._ys.insert(at, spot.coordinates.y)
        self._sorted.insert(at, spot)

    def _delete(self, spot: Spot) -> None:
        at = bisect.bisect_left(self._keys, (spot.coordinates.x, spot.age))
        del self._keys[at], self._ys[at], self._sorted[at]
