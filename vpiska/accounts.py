"""Sign-up, login and profile changes: the users half of the API, below the wire format."""

from __future__ import annotations

import collections
import dataclasses
import logging

from vpiska.auth import Passwords, Tokens
from vpiska.domain import Identity, User, new_id
from vpiska.errors import DomainError, ErrorCode
from vpiska.signin_limits import SigninLimits
from vpiska.store import Store

log = logging.getLogger(__name__)

# User ids known to exist, kept so a token's user is looked up once, not on every request.
# An account deleted (users/delete) is forgotten at once here, and on every node of a cluster
# when its notice arrives (vpiska/cluster/cluster_channel.py); the bound only caps memory.
KNOWN_USERS = 100_000


@dataclasses.dataclass(frozen=True)
class Session:
    """What a client gets on sign-up and login (the API's `loginResponse`)."""

    user: User
    event_id: str | None
    access_token: str


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """A user's new image set: the fresh token carrying it, and the image it replaced (None:
    the user had none), which nothing refers to any more."""

    access_token: str
    replaced: str | None


class Accounts:
    def __init__(self, store: Store, tokens: Tokens, passwords: Passwords,
                 limits: SigninLimits) -> None:
        self._store = store
        self._tokens = tokens
        self._passwords = passwords
        self._limits = limits
        self._known: collections.OrderedDict[str, None] = collections.OrderedDict()

    async def identify(self, token: str) -> Identity | None:
        """Who `token` says the caller is, if it is a valid token of a user that exists.

        A well-signed token of a user the store does not have (forged with the public default
        key, or from another deployment) is refused like any invalid token.
        """
        identity = self._tokens.read(token)
        if identity is None:
            return None
        if identity.user_id in self._known:
            self._known.move_to_end(identity.user_id)
            return identity
        if await self._store.user_by_id(identity.user_id) is None:
            log.info("token refused: no such user", extra={"user_id": identity.user_id})
            return None
        self._remember(identity.user_id)
        return identity

    async def know_users(self) -> None:
        """Fill the cache of known users from the store before the first request: after a
        restart every client reconnects at once, and a store read per handshake made the
        store the bottleneck of that storm."""
        for user_id in await self._store.user_ids(KNOWN_USERS):
            self._remember(user_id)
        log.info("known users loaded", extra={"users": len(self._known)})

    def forget(self, user_id: str) -> None:
        """The account was deleted: its tokens identify nobody from now on."""
        self._known.pop(user_id, None)

    def forget_all(self) -> None:
        """Every token's user is looked up in the store again, once (a cluster node that may
        have missed a deletion's notice)."""
        self._known.clear()

    async def check_password(self, caller: Identity, password: str, address: str = "") -> User:
        """The caller's account, if `password` is theirs: what an irreversible change asks
        for. A wrong one counts against the phone's sign-in limit like a wrong login
        (TooManyRequests after too many), so this is no way around that limit.
        UserNotFound if the account is gone, InvalidPassword if the password is wrong."""
        user = await self._store.user_by_id(caller.user_id)
        if user is None:
            raise DomainError(ErrorCode.USER_NOT_FOUND)
        async with self._limits.guessing(user.phone) as guess:
            ok, _ = await self._passwords.verify(password, user.password_hash, address)
            if not ok:
                guess.wrong()
                raise DomainError(ErrorCode.INVALID_PASSWORD)
        return user

    def _remember(self, user_id: str) -> None:
        self._known[user_id] = None
        if len(self._known) > KNOWN_USERS:
            self._known.popitem(last=False)

    async def sign_up(self, name: str, phone: str, password: str, address: str = "") -> Session:
        """`address`: the client's, whose turn the password hash waits for (vpiska/auth.py)."""
        user = User(id=new_id(), name=name, phone=phone,
                    password_hash=await self._passwords.hash(password, address))
        await self._store.add_user(user)
        self._remember(user.id)
        log.info("user signed up", extra={"user_id": user.id})
        return Session(user, None, self._tokens.issue(user))

    async def log_in(self, phone: str, password: str, address: str = "") -> Session:
        """TooManyRequests, before any hash, while the phone has had too many wrong passwords
        (vpiska/signin_limits.py). `address`: as for `sign_up`; its turn for a hash is taken
        before the store read (vpiska/auth.py `Passwords.turn`)."""
        async with (self._limits.guessing(phone) as guess,
                    self._passwords.turn(address) as turn):
            user = await self._store.user_by_phone(phone)
            if user is None:
                raise DomainError(ErrorCode.USER_NOT_FOUND)
            ok, upgrade = await turn.verify(password, user.password_hash)
            if not ok:
                guess.wrong()
                raise DomainError(ErrorCode.INVALID_PASSWORD)
        if upgrade:
            await self._store.set_password_hash(user.id,
                                                await self._passwords.hash(password, address))
            log.info("password hash upgraded to argon2id", extra={"user_id": user.id})
        event_id = await self._store.open_event_of(user.id)
        return Session(user, event_id, self._tokens.issue(user))

    async def update(self, caller: Identity, name: str, phone: str) -> str:
        if name or phone:
            user = await self._store.update_user(caller.user_id, name=name or None,
                                                 phone=phone or None)
        else:
            user = await self._store.user_by_id(caller.user_id)
        return self._fresh_token(user)

    async def change_password(self, caller: Identity, password: str) -> str:
        await self._store.set_password_hash(caller.user_id,
                                            await self._passwords.hash(password, caller.user_id))
        return self._fresh_token(await self._store.user_by_id(caller.user_id))

    async def set_image(self, caller: Identity, image_id: str) -> ImageSet:
        """Make `image_id` the caller's image (UserNotFound if the user is gone). The image it
        replaces is in the answer, once, for the caller to delete: the store swaps the two in
        one step, so two sets at once each replace a different one."""
        before = await self._store.set_user_image(caller.user_id, image_id)
        if before is None:
            raise DomainError(ErrorCode.USER_NOT_FOUND)
        token = self._tokens.issue(dataclasses.replace(before, image_id=image_id))
        return ImageSet(token, before.image_id)

    def _fresh_token(self, user: User | None) -> str:
        if user is None:  # a valid token of a user deleted since
            raise DomainError(ErrorCode.USER_NOT_FOUND)
        return self._tokens.issue(user)
