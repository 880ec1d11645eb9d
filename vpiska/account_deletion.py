"""Leaving for good: `users/delete` (API.md, "Opt-in room features").

What a deleted account leaves behind: no record (its name and phone are free), no image, no
open event, no socket, no working token, and chat lines that still hold their place and text
but no longer say who wrote them.

In this order, and why:
1. The password, under the phone's sign-in limit (Accounts.check_password).
2. The user's open event is closed (its room gets `closeEvent/`, its sockets close as for
   events/close), and their chat lines are anonymised in the store and in the rooms that keep
   them in memory. Both can be done again: a retry after a crash here, with the same token,
   finds the account still there and finishes.
3. The record is deleted. From here the token fails where its user is looked up in the store.
4. Every node forgets the account and closes its sockets with 4004 (Rooms.close_account).
5. The image's record and bytes are deleted (no longer anyone's image, so not in use).
6. Steps 2 and 4 again: a request that passed its token check before step 3 may have done
   something after the first pass (an events/create, a chat line on a socket closed in step
   4, a handshake that joined its room just after the sweep of its node).

What a crash between 3 and 5 leaves: an image nobody refers to, served by its id until then.
"""

from __future__ import annotations

import contextlib
import logging

from vpiska.accounts import Accounts
from vpiska.actors.commands import Close, RereadChat
from vpiska.actors.rooms import Rooms, ask_where_it_runs
from vpiska.domain import Identity
from vpiska.errors import DomainError, ErrorCode
from vpiska.media import MediaLibrary
from vpiska.store import Store

log = logging.getLogger(__name__)


class AccountDeletion:
    def __init__(self, accounts: Accounts, store: Store, rooms: Rooms,
                 media: MediaLibrary) -> None:
        self._accounts = accounts
        self._store = store
        self._rooms = rooms
        self._media = media

    async def delete(self, caller: Identity, password: str, address: str = "") -> None:
        """Error handling: InvalidPassword (counted as a wrong login), TooManyRequests,
        UserNotFound if the account is gone already; a store or room failure escapes as
        InternalError, and the same request again completes the deletion."""
        user = await self._accounts.check_password(caller, password, address)
        await self._leave_traces(user.id)
        await self._store.delete_user(user.id)
        self._accounts.forget(user.id)
        await self._rooms.close_account(user.id)
        if user.image_id:
            with contextlib.suppress(DomainError):  # MediaNotFound: deleted by a retry
                await self._media.delete(user.image_id)
        await self._leave_traces(user.id)
        await self._rooms.close_account(user.id)
        log.info("account deleted", extra={"user_id": user.id})

    async def _leave_traces(self, user_id: str) -> None:
        """Close the user's open event and anonymise their chat lines, here and in the rooms
        that keep a chat in memory."""
        event_id = await self._store.open_event_of(user_id)
        if event_id is not None and (room := await self._rooms.find(event_id)) is not None:
            with contextlib.suppress(DomainError):  # EventNotFound: closed meanwhile
                await ask_where_it_runs(self._rooms, room, lambda reply: Close(user_id, reply))
        for touched in await self._store.anonymise_chat(user_id):
            room = await self._rooms.find(touched)
            if room is None:  # closed: nothing keeps its chat but the store
                continue
            try:
                await ask_where_it_runs(self._rooms, room, RereadChat)
            except DomainError as refusal:
                if ErrorCode.EVENT_NOT_FOUND not in refusal.codes:
                    raise
