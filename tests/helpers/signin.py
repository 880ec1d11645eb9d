"""Sign-in over real sockets: clients bound to a loopback address of their own (each one a
client address the limits count), users put in the store directly, and a clock of the
test's own for the rules alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tests.helpers.server import Server
from vpiska.auth import Passwords
from vpiska.domain import User, new_id

LOGIN = "/api/v1/users/login"
PASSWORD = "secret1"
WAIT_SECONDS = 30


class Clock:
    """A clock the test sets (`now`), for SigninLimits alone."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def client_from(url: str, address: str, *, connections: int = 10
                      ) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the server at `url` whose connections (at most `connections` at once) come
    from `address` (a loopback address)."""
    transport = httpx.AsyncHTTPTransport(
        local_address=address, limits=httpx.Limits(max_connections=connections))
    async with httpx.AsyncClient(base_url=url, transport=transport,
                                 timeout=WAIT_SECONDS) as client:
        yield client


async def codes(client: httpx.AsyncClient, path: str, body: dict[str, str],
                **kwargs: Any) -> list[str]:
    """The envelope's error codes ([] for a success), checking the envelope's form."""
    response = await client.post(path, json=body, **kwargs)
    assert response.status_code == 200
    envelope = response.json()
    assert list(envelope) == ["isSuccess", "errors", "result"]
    if envelope["isSuccess"]:
        return []
    found = [error["errorCode"] for error in envelope["errors"]]
    if found == ["TooManyRequests"]:
        assert int(response.headers["retry-after"]) >= 1
    else:
        assert "retry-after" not in response.headers
    return found


def login(phone: str, password: str = PASSWORD) -> dict[str, str]:
    return {"phone": phone, "password": password}


_hash: list[str] = []


async def add_users(server: Server, *phones: str) -> None:
    """Users with PASSWORD, put in the store directly: one argon2 hash for all of them."""
    if not _hash:
        _hash.append(await Passwords(server.config).hash(PASSWORD))
    for phone in phones:
        await server.store.add_user(User(id=new_id(), name=f"n{phone}", phone=phone,
                                          password_hash=_hash[0]))
