"""Who else learns of the map changes an event's actor makes.

`events/range` is answered from a map index (geo.py) without the store. The actor that moves or
closes its event changes this node's index itself; in a cluster every other node keeps an index
of its own, and the actor tells them through the publisher it is given
(vpiska/cluster/map_notices.py), a network effect it can see in its own code rather than one
hidden in the index. On one node there is nobody else to tell (`UNSHARED_MAP`).
"""

from __future__ import annotations

from typing import Protocol

from vpiska.domain import Coordinates


class MapPublisher(Protocol):
    """Called on the actor's task, after its own index has changed; must not wait."""

    def moved(self, event_id: str, coordinates: Coordinates) -> None:
        """The event's owner moved it to `coordinates`."""

    def closed(self, event_id: str) -> None:
        """The event's owner closed it: it leaves every map."""


class _Unshared:
    """One node: its own index is the only map."""

    def moved(self, event_id: str, coordinates: Coordinates) -> None:
        pass

    def closed(self, event_id: str) -> None:
        pass


UNSHARED_MAP: MapPublisher = _Unshared()
