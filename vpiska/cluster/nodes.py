"""Which nodes are alive, and which of them an event belongs to when nobody owns it.

Each node beats in `vpiska:nodes` every third of the lease TTL; a node whose beat is older
than the TTL is gone. An orphaned event (no lease: its owner died, left, or it is new) is
placed by rendezvous hashing over the live nodes: every node computes the same answer from
the same list, without talking, and losing a node moves only that node's events.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable


def new_node_id() -> str:
    return uuid.uuid4().hex[:12]


def _weight(event_id: str, node_id: str) -> bytes:
    return hashlib.blake2b(f"{event_id}/{node_id}".encode(), digest_size=8).digest()


def designated(event_id: str, nodes: Iterable[str]) -> str | None:
    """The live node that should own `event_id` when nobody does (None without nodes)."""
    return max(nodes, key=lambda node: _weight(event_id, node), default=None)
