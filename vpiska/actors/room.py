"""A Room is what the supervisor keeps of one open event between actor incarnations.

It holds the event's inbox and its live member table, so a restarted actor takes over the same
queue and the same sockets: members stay connected across a restart (see EventSupervisor).
Only the running EventActor writes the member table; others may read `users_count`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import outcome
import trio

from vpiska.actors.commands import Command, Join, Reply
from vpiska.actors.member import CloseCode, Member
from vpiska.errors import DomainError, ErrorCode

log = logging.getLogger(__name__)


class Room:
    def __init__(self, event_id: str, owner_id: str, *, inbox_size: int,
                 reply_timeout: float) -> None:
        self.event_id = event_id
        self.owner_id = owner_id  # never changes, so callers may check ownership up front
        self.inbox, self.commands = trio.open_memory_channel[Command](inbox_size)
        self.members: dict[str, set[Member]] = {}  # user id -> that user's open sockets
        self.failed = False
        self._reply_timeout = reply_timeout

    @property
    def users_count(self) -> int:
        return len(self.members)

    async def ask(self, make: Callable[[Reply], Command]) -> object:
        """Send the command `make(reply)` and return its answer, or raise its DomainError.

        Error handling: EventNotFound once the event has closed; InternalError (logged with
        the cause) when the room has failed, crashed while handling this command, or did
        not answer within the reply deadline. It never waits longer than that deadline.
        """
        reply, answer = trio.open_memory_channel[outcome.Outcome[object]](1)
        try:
            with trio.fail_after(self._reply_timeout):
                await self.inbox.send(make(reply))
                with answer:
                    result = await answer.receive()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if self.failed:
                self._internal("the event's room has failed")
            raise DomainError(ErrorCode.EVENT_NOT_FOUND) from None
        except trio.EndOfChannel:
            self._internal("the event's room crashed while handling the command")
        except trio.TooSlowError:
            self._internal("the event's room did not answer in time")
        return result.unwrap()

    def _internal(self, cause: str) -> None:
        log.error("event command failed", extra={"event_id": self.event_id, "cause": cause})
        raise DomainError(ErrorCode.INTERNAL_ERROR)

    async def tell(self, command: Command) -> None:
        """Send a command that needs no answer; dropped if the room has ended."""
        try:
            with trio.fail_after(self._reply_timeout):
                await self.inbox.send(command)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            log.debug("command dropped: room ended", extra={"event_id": self.event_id})

    def shut(self, code: CloseCode) -> None:
        """End the room for good: refuse queued and future commands, close every socket."""
        while True:  # answer what is queued, then close: both at once, no await in between
            try:
                command = self.commands.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            reply = getattr(command, "reply", None)
            if isinstance(command, Join):
                command.member.finish(code)
            if reply is not None:
                reply.close()
        self.commands.close()
        self.finish_members(code)

    def finish_members(self, code: CloseCode) -> None:
        """Close every member's socket with `code` once its queued frames are out."""
        for sockets in self.members.values():
            for member in sockets:
                member.finish(code)
        self.members.clear()
