"""The one interface every store implements, so the server cannot tell sqlite from MongoDB.

Uniqueness (user name, user phone, one open event per owner) is enforced by the store's own
constraints, never by check-then-insert in Python, so it holds under concurrent requests; a
violated constraint is raised as the DomainError the API documents for it.

Error handling: methods raise DomainError for a violated constraint and let driver errors
escape; the HTTP layer answers the latter with InternalError and logs them.

Fencing (ARCHITECTURE.md, "Cluster"). In a cluster each open event has one owner, the node holding
its Redis lease, and every acquisition of a lease bumps the event's fencing epoch. A node paused
past its lease (GC, SIGSTOP, a partition) wakes up still believing it owns the event; only the
store can stop its writes, because only the store sees both owners. So:

- The new owner's first call is `claim_event(event_id, epoch, claimant)`: from then on the store
  refuses every write to that event whose epoch is not `epoch`. Claims only move forward.
- The store, not Redis, is the authority on epochs. Redis can hand one epoch out twice: restarted
  without its data, or failed over to a replica that missed the last INCR, its counter goes
  back. So the store keeps who claimed the epoch (`claimant`: the node's id and which of its
  activations, vpiska/cluster/ownership.py) beside it, and a claim of the claimed epoch by anyone
  else is refused (EpochTaken) exactly like an older one: the refused node raises its Redis
  counter above the stored epoch and claims again. Only the claimant may claim again (a
  crashed actor restarts, an owner retries), so two owners can never both hold one epoch.
- Every write an event's actor makes (`append_chat`, `update_event`, `close_event`,
  `add_event_media`, `remove_event_media`) takes `epoch`. The rule is equality: a write is
  applied only if its epoch *is* the claimed one. Below it, StaleEpoch and nothing is written
  (for `append_chat`, none of the batch's lines). Above it, AssertionError and nothing is
  written: the writer skipped `claim_event`, a bug. Why not accept "at least the claimed
  epoch"? Because a write's epoch above the claim would then be accepted without having fenced
  anyone: an owner that never claimed could write beside the one that did, and the new owner
  could read `chat_length` while the old owner is still appending. Requiring the claim first
  makes it the one point after which the old owner can no longer write, so what the new owner
  reads right after `claim_event` (the event, `chat_length`) stays true.
- The check and the write are one atomic step, so no write can slip in between a claim and the
  writes it fences (each store says how).
- `epoch=None` is unfenced: one node without Redis, whatever epoch is stored; exactly the
  behaviour before fencing. An event the store does not know has no claim and is not fenced.
- Events written before fencing existed (an older sqlite file, the older Go backend's documents)
  have epoch 0, and no claimant; epochs handed out by Redis start at 1. An event claimed before
  claimants were kept has none: a claim of its epoch is refused, whoever makes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from vpiska.domain import ChatMessage, Coordinates, Event, EventMedia, Media, User
from vpiska.errors import DomainError, ErrorCode


class StaleEpoch(Exception):
    """A write by an owner whose lease has passed to a newer owner: `claimed` is above `epoch`.

    Nothing of the refused call was written. Retrying cannot succeed: the writer has lost the
    event, and should end its actor and let the new owner serve it.
    """

    def __init__(self, event_id: str, epoch: int, claimed: int) -> None:
        super().__init__(
            f"event {event_id}: epoch {epoch} is stale, epoch {claimed} has claimed the event")
        self.event_id = event_id
        self.epoch = epoch
        self.claimed = claimed


class EpochTaken(StaleEpoch):
    """A claim of the epoch the event is claimed at, by another node than the one that claimed
    it: Redis handed that epoch out twice (it lost its counter). The claimant must take an epoch
    above `claimed` and claim again; nothing was written."""

    def __init__(self, event_id: str, epoch: int, holder: str | None) -> None:
        super().__init__(event_id, epoch, epoch)
        self.holder = holder

    def __str__(self) -> str:
        by = "a node of an older vpiska" if self.holder is None else f"node {self.holder}"
        return f"event {self.event_id}: epoch {self.epoch} was claimed already, by {by}"


def check_claim(event_id: str, epoch: int, claimant: str, claimed: int, holder: str | None
                ) -> None:
    """Refuse a claim of `epoch` by `claimant` of an event claimed at `claimed` by `holder`."""
    if epoch < claimed:
        raise StaleEpoch(event_id, epoch, claimed)
    if epoch == claimed and claimant != holder:
        raise EpochTaken(event_id, epoch, holder)


def check_epoch(event_id: str, epoch: int | None, claimed: int) -> None:
    """Refuse a write with `epoch` to an event claimed at `claimed` (see the module docstring).

    An explicit `raise AssertionError`, not `assert`: `python -O` must not turn the fence off.
    """
    if epoch is None or epoch == claimed:
        return
    if epoch < claimed:
        raise StaleEpoch(event_id, epoch, claimed)
    raise AssertionError(
        f"event {event_id}: a write with epoch {epoch} but epoch {claimed} is claimed:"
        " claim_event must come first")


class Store(Protocol):
    # Users.
    async def add_user(self, user: User) -> None:
        """Insert; NameAlreadyUse / PhoneAlreadyUse / NameAndPhoneAlreadyUse on a clash."""

    async def user_by_id(self, user_id: str) -> User | None: ...

    async def user_by_phone(self, phone: str) -> User | None: ...

    async def user_ids(self, limit: int) -> list[str]:
        """Up to `limit` ids of existing users, any of them (what a starting process fills
        its cache of known users with)."""

    async def update_user(
        self, user_id: str, *, name: str | None, phone: str | None
    ) -> User | None:
        """Change the given fields; None if the user is gone; the same codes as add_user."""

    async def set_password_hash(self, user_id: str, password_hash: str) -> None: ...

    async def set_user_image(self, user_id: str, image_id: str) -> User | None:
        """Make `image_id` the user's image; return the user as it was before (with the image
        this replaced), None if there is no such user. Read and write are one atomic step: of
        concurrent calls for one user, each replaces a different image, so every image
        replaced is returned exactly once and the one that ends up set never is."""

    async def delete_user(self, user_id: str) -> User | None:
        """Delete the user's record: the record as it was, or None if there was none. Its
        name and phone are free for a sign-up as soon as this returns."""

    async def anonymise_chat(self, user_id: str) -> list[str]:
        """Empty `user_name` and `user_image_id` of every chat line `user_id` wrote, in every
        event (the lines keep their place and text): the ids of the events that had any."""

    # Media metadata (the bytes live in MediaBytes: vpiska/store/media_bytes.py).
    async def add_media(self, media: Media) -> None: ...

    async def media(self, media_id: str) -> Media | None: ...

    async def media_ids(self, after: str, limit: int) -> list[str]:
        """Up to `limit` media ids above `after`, in ascending order: every record, a page at a
        time (`media import` walks them)."""

    async def media_found(self, media_ids: Sequence[str]) -> set[str]:
        """Which of `media_ids` have a record (one query: the media sweep asks in batches)."""

    async def delete_media(self, media_id: str) -> bool:
        """Delete the record: True if there was one, False if not. MediaInUse, deleting nothing,
        while an event (open or closed) lists the media or a user's image is the media."""

    # Events.
    async def add_event(self, event: Event) -> None:
        """Insert an open event; OwnerAlreadyHasEvent if the owner has one open already."""

    async def event(self, event_id: str) -> Event | None:
        """The event in any state, with its media list in the order it was attached."""

    async def open_event_of(self, owner_id: str) -> str | None: ...

    async def open_events(self) -> list[Event]:
        """Every open event, oldest first."""

    async def claim_event(self, event_id: str, epoch: int, claimant: str) -> Event | None:
        """The first call of an event's new owner, `claimant`: from now on, writes to
        the event with an epoch other than `epoch` are refused (see "Fencing" above).

        Returns the event in any state, None if the store does not know it. Raises StaleEpoch
        if a newer epoch has claimed it already, EpochTaken (a StaleEpoch) if another claimant
        has claimed this one (check_claim). Claiming the claimed epoch again as its claimant is a
        no-op (an owner may retry its activation). Once this returns, no write of an older
        owner can land, so `chat_length` read after it is where the new owner numbers its lines
        from.
        """

    # The writes of an event's actor. `epoch`: the writer's fencing epoch; None is unfenced.
    # StaleEpoch below the claimed epoch, AssertionError above it; nothing is written either way.
    async def update_event(
        self, event_id: str, address: str, coordinates: Coordinates, *, epoch: int | None = None
    ) -> None: ...

    async def close_event(self, event_id: str, *, epoch: int | None = None) -> None: ...

    async def add_event_media(
        self, event_id: str, media: EventMedia, *, epoch: int | None = None
    ) -> None: ...

    async def remove_event_media(
        self, event_id: str, media_id: str, *, epoch: int | None = None
    ) -> bool:
        """True if the media was attached and is now detached."""

    async def ban_member(self, event_id: str, user_id: str, *, epoch: int | None = None) -> None:
        """Add `user_id` to the event's `banned` (a no-op if it is there already or the event
        is unknown). Fenced like the other writes of an event's actor."""

    # Chat: lines are numbered 0, 1, 2, … per event; a batch is written in one transaction.
    async def append_chat(
        self, event_id: str, first_seq: int, messages: Sequence[ChatMessage], *,
        epoch: int | None = None,
    ) -> None:
        """Store lines `first_seq`, `first_seq + 1`, …: all of them or (on an error) none."""

    async def chat(self, event_id: str, start: int = 0) -> list[ChatMessage]:
        """Lines `start`, `start + 1`, … in order."""

    async def chat_length(self, event_id: str) -> int: ...

    # Lines with an identity (API.md, "Opt-in room features"): a line keeps its `sent_at` and
    # `client_id` (ChatMessage), written with it in `append_chat`'s one transaction, so a
    # resend is recognised after any crash or failover.
    async def chat_slice(self, event_id: str, start: int, stop: int) -> list[ChatMessage]:
        """Lines `start` … `stop - 1` that exist, in order (a page of the history)."""

    async def chat_client_ids(self, event_id: str, start: int = 0) -> dict[tuple[str, str], int]:
        """(user id, client id) → line number, for every line from `start` on sent with an
        id (a room remembers the ids of its last lines only: vpiska/actors/lines.py)."""

    async def erase_chat(self, event_id: str, seq: int, *, epoch: int | None = None) -> bool:
        """Empty line `seq`'s text (its place and the rest stay); False if there is no such
        line. Fenced like the other writes of an event's actor."""

    async def ping(self) -> None:
        """Return when the store answers a trivial query."""

    async def maintain(self) -> None:
        """The store's housekeeping, for as long as it is open: runs until cancelled (the
        server runs it beside its work; a store that needs none just waits)."""

    async def aclose(self) -> None: ...


def clash_error(name_taken: bool, phone_taken: bool) -> DomainError:
    """The code for a user write that hit the unique name and/or phone constraint."""
    if name_taken and phone_taken:
        return DomainError(ErrorCode.NAME_AND_PHONE_ALREADY_USE)
    if name_taken:
        return DomainError(ErrorCode.NAME_ALREADY_USE)
    return DomainError(ErrorCode.PHONE_ALREADY_USE)
