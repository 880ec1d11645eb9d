"""The map index `events/range` is answered from agrees with a brute-force filter."""

from __future__ import annotations

import random

from vpiska.actors.geo import MapIndex
from vpiska.domain import Coordinates
from vpiska.wire import coordinates_json, encode, spot_text


def test_map_index_matches_brute_force_on_random_data() -> None:
    rng = random.Random(7)
    index, truth = MapIndex(), {}
    for i in range(2000):
        event_id = f"e{i}"
        where = Coordinates(rng.choice([rng.uniform(-50, 50), rng.randint(-5, 5)]),
                            rng.uniform(-50, 50))
        index.put(event_id, event_id, where)
        truth[event_id] = where
    for event_id in rng.sample(sorted(truth), 500):
        if rng.random() < 0.5:
            index.remove(event_id)
            del truth[event_id]
        else:
            truth[event_id] = Coordinates(rng.randint(-5, 5), rng.uniform(-50, 50))
            index.move(event_id, truth[event_id])
    order = {event_id: i for i, event_id in enumerate(truth)}  # put order = age
    for _ in range(300):
        x, y = rng.uniform(-60, 60), rng.uniform(-60, 60)
        h, v = rng.choice([0, rng.uniform(0, 40)]), rng.uniform(0, 40)
        found = [s.event_id for s in index.within(x - h, x + h, y - v, y + v)]
        expected = sorted((e for e, c in truth.items()
                           if x - h <= c.x <= x + h and y - v <= c.y <= y + v),
                          key=order.__getitem__)
        assert found == expected


def test_a_range_entry_from_its_cached_text_is_the_entry_encoded_whole() -> None:
    names = ["party", 'a "quoted" \\ name', "вписка 🎉", "", "x" * 300]
    spots = [(0.0, -0.0), (10.0, 2.5), (-1e15, 1e-7), (2.0**53, 123456.789), (-5, 7)]
    for name in names:
        for x, y in spots:
            for count in (0, 1, 12345):
                head, tail = spot_text("e1", name, x, y)
                whole = encode({"id": "e1", "name": name, "usersCount": count,
                                "coordinates": coordinates_json(Coordinates(x, y))})
                assert f"{head}{count}{tail}" == whole
