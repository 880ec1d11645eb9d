"""Who is calling: the `Authorization: Bearer` token of a 🔒 endpoint."""

from __future__ import annotations

from quart import request

from vpiska.accounts import Accounts
from vpiska.domain import Identity
from vpiska.errors import DomainError, ErrorCode


def bearer_token(authorization: str | None = None) -> str:
    """The token of an `Authorization: Bearer` header: `authorization`, or the request's."""
    if authorization is None:
        authorization = request.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def caller(accounts: Accounts) -> Identity:
    """The identity of a valid bearer token of an existing user; `unauthorized` otherwise."""
    identity = await accounts.identify(bearer_token())
    if identity is None:
        raise DomainError(ErrorCode.UNAUTHORIZED)
    return identity
