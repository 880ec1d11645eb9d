"""Who is in an event's room, as its v2 sockets are shown it (API.md, "Presence").

A v2 socket is sent the whole list once, `presence/{"users":[…]}`, and from then on the changes,
`membersLeft/["<userId>",…]` and `membersJoined/[{…}]`, coalesced like counts: the actor
announces them at most once per interval (vpiska/actors/event.py). A user is present while
any of their sockets is, whatever its version, and is listed once.

What a socket is shown adds up. Sockets that have their list ("watching") know the set as it
was at the last announcement; `_joined` and `_left` hold what changed since, netted per user (a
user who joins and leaves within one interval is neither), so applying `membersLeft` then
`membersJoined` gives exactly the set present at the announcement. A socket that joins waits
for the next announcement and is sent that moment's list instead of its changes: it is never
told of a change its list already shows, nor misses one. In a quiet room the announcement is
due at once; in a busy one a joiner waits up to one interval, as for its count.

On another node (vpiska/cluster/gateway.py) a socket's list is told to it alone, and the
changes go out once, for the sockets there that already have their list (Audience.PRESENT).

Cost: nothing is tracked while no socket watches, so a room of v1 sockets does no presence work
beyond two checks per join and leave. The state is O(members): the sets of v2 sockets and the
changes of one interval, never more than the users present plus those who left.
"""

from __future__ import annotations

from collections.abc import Iterable

from vpiska import wire
from vpiska.actors.frames import Audience, Frame
from vpiska.actors.member import Member
from vpiska.domain import Identity

LIST_PREFIX = "presence/"


def user_json(identity: Identity) -> dict[str, str]:
    """One user as the presence list and `events/members` show it (`userImageId` is "" when
    the user has no image, as in a chat line)."""
    return {"userId": identity.user_id, "userName": identity.name,
            "userImageId": identity.image_id}


def users_text(present: Iterable[Identity]) -> str:
    """`{"users":[…]}`: a presence list's payload, and `events/members`' result."""
    return wire.encode({"users": [user_json(identity) for identity in present]})


def present_users(members: dict[str, set[Member]]) -> list[Identity]:
    """Each present user once, in the order they arrived (a room's member table)."""
    return [next(iter(sockets)).identity for sockets in members.values()]


class Presence:
    """A room's presence bookkeeping; the Room calls it as sockets come and go, and the
    actor's announcement takes what it has gathered (`changes`, `take_waiting`)."""

    def __init__(self) -> None:
        self.waiting: set[Member] = set()  # v2 sockets not yet sent their list
        self.watching: set[Member] = set()  # v2 sockets sent it, and every change since
        self.remote_watching = 0  # of `watching`, on other nodes
        self._joined: dict[str, Identity] = {}  # users who arrived since the announcement
        self._left: dict[str, None] = {}  # users who left since, in the order they did

    @property
    def pending(self) -> bool:
        """Something to announce: a list someone waits for, or changes someone watches."""
        return bool(self.waiting) or bool(self.watching and (self._joined or self._left))

    def socket_added(self, member: Member) -> None:
        """A v2 socket joined: it waits for its list."""
        if member not in self.watching:
            self.waiting.add(member)

    def socket_removed(self, member: Member) -> None:
        self.waiting.discard(member)
        if member in self.watching:
            self.watching.discard(member)
            if member.gateway is not None:
                self.remote_watching -= 1
            if not self.watching:  # nobody to tell: the next watcher gets a list
                self._joined.clear()
                self._left.clear()

    def arrived(self, identity: Identity) -> None:
        """The user's first socket joined (only called while someone watches)."""
        if identity.user_id in self._left:  # left and came back within the interval
            del self._left[identity.user_id]
        else:
            self._joined[identity.user_id] = identity

    def departed(self, user_id: str) -> None:
        """The user's last socket left (only called while someone watches)."""
        if user_id in self._joined:  # came and went within the interval
            del self._joined[user_id]
        else:
            self._left[user_id] = None

    def changes(self) -> list[Frame]:
        """The frames telling watching sockets what changed since the last announcement (none
        if nothing did), and a fresh start for the next."""
        shown = []
        if self._left:
            shown.append(Frame("membersLeft/" + wire.encode(list(self._left)),
                               Audience.PRESENT))
        if self._joined:
            shown.append(Frame("membersJoined/" + wire.encode(
                [user_json(identity) for identity in self._joined.values()]), Audience.PRESENT))
        self._joined.clear()
        self._left.clear()
        return shown

    def take_waiting(self) -> list[Member]:
        """The sockets to send the list to now; from now on they watch."""
        waiting = list(self.waiting)
        self.waiting.clear()
        self.watching.update(waiting)
        self.remote_watching += sum(member.gateway is not None for member in waiting)
        return waiting
