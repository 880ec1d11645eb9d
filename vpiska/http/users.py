"""`/api/v1/users/*`: sign-up, login, profile, password and avatar.

Sign-up and login are served in front of Quart (`signin_routes`, vpiska/http/json_routes.py):
a password guesser over its rate makes thousands of refused attempts a second, and each must
cost next to nothing, or the users logging in meanwhile wait behind them in the event loop.
Their Quart routes stay (documented, and what serves them without that layer).
"""

from __future__ import annotations

import re
from typing import Any

import trio
from quart import Blueprint, request

from vpiska.accounts import Accounts, Session
from vpiska.config import Config
from vpiska.errors import ErrorCode
from vpiska.http.auth import caller
from vpiska.http.body import json_object, require, text
from vpiska.http.client_address import client_address
from vpiska.http.envelope import answer, success, success_body
from vpiska.http.json_routes import JsonHandler, RequestScope
from vpiska.http.multipart import read_multipart
from vpiska.media import MediaLibrary
from vpiska.signin_limits import SigninLimits

PREFIX = "/api/v1/users"
PHONE = re.compile(r"[0-9]{10}")  # ASCII digits only, as the older backend's RE2 \d
MIN_PASSWORD = 6


def users_routes(config: Config, accounts: Accounts, media: MediaLibrary,
                 limits: SigninLimits) -> Blueprint:
    routes = Blueprint("users", __name__, url_prefix=PREFIX)

    async def body() -> dict[str, Any]:
        return await json_object(config.max_json_bytes)

    handlers = signin_routes(config, accounts, limits)
    signing_up, logging_in = handlers[f"{PREFIX}/create"], handlers[f"{PREFIX}/login"]

    @routes.post("/create")
    async def create() -> Any:
        return answer(await signing_up(await body(), request.scope))

    @routes.post("/login")
    async def login() -> Any:
        return answer(await logging_in(await body(), request.scope))

    @routes.post("/update")
    async def update() -> Any:
        identity = await caller(accounts)
        data = await body()
        name, phone = text(data, "name"), text(data, "phone")
        require(phone_codes(phone) if phone else [])
        return success({"accessToken": await accounts.update(identity, name, phone)})

    @routes.post("/password/change")
    async def change_password() -> Any:
        identity = await caller(accounts)
        data = await body()
        password, confirm = text(data, "password"), text(data, "confirmPassword")
        require(password_codes(password), (password != confirm, ErrorCode.CONFIRM_PASSWORD_INVALID))
        return success({"accessToken": await accounts.change_password(identity, password)})

    @routes.post("/media/set")
    async def set_image() -> Any:
        identity = await caller(accounts)
        with await read_multipart("image", config.max_upload_bytes, media.spool_dir) as form:
            image = await media.add(form.file())
        # Shielded: a client hanging up now must not leave the new image or the one it
        # replaces behind, public and referred to by nothing.
        with trio.CancelScope(shield=True):
            try:
                changed = await accounts.set_image(identity, image.id)
            except BaseException:
                await media.discard(image.id)  # kept if the swap happened after all
                raise
            if changed.replaced is not None:
                await media.discard(changed.replaced)
        return success({"imageId": image.id, "accessToken": changed.access_token})

    return routes


def signin_routes(config: Config, accounts: Accounts,
                  limits: SigninLimits) -> dict[str, JsonHandler]:
    """Sign-up and login, by path, for vpiska/http/json_routes.py (and the Quart routes)."""

    async def admitted(scope: RequestScope) -> str:
        """The client's address, once admitted. Counted once the request is valid: a
        malformed one costs nothing to refuse, and a client fixing its typo is not charged."""
        address = client_address(scope, config.trusted_proxies)
        await limits.admit(address)
        return address

    async def create(data: dict[str, Any], scope: RequestScope) -> str:
        name, phone = text(data, "name"), text(data, "phone")
        password, confirm = text(data, "password"), text(data, "confirmPassword")
        require(
            (not name, ErrorCode.NAME_IS_EMPTY),
            phone_codes(phone),
            password_codes(password),
            (password != confirm, ErrorCode.CONFIRM_PASSWORD_INVALID),
        )
        address = await admitted(scope)
        session = await accounts.sign_up(name, phone, password, address)
        return success_body(login_response(session))

    async def login(data: dict[str, Any], scope: RequestScope) -> str:
        phone, password = text(data, "phone"), text(data, "password")
        require(phone_codes(phone), password_codes(password))
        address = await admitted(scope)
        return success_body(login_response(await accounts.log_in(phone, password, address)))

    return {f"{PREFIX}/create": create, f"{PREFIX}/login": login}


def phone_codes(phone: str) -> list[ErrorCode]:
    if not phone:
        return [ErrorCode.PHONE_IS_EMPTY]
    return [] if PHONE.fullmatch(phone) else [ErrorCode.PHONE_REGEX_INVALID]


def password_codes(password: str) -> list[ErrorCode]:
    if not password:
        return [ErrorCode.PASSWORD_IS_EMPTY]
    # Measured in UTF-8 bytes, as the older backend did.
    too_short = len(password.encode()) < MIN_PASSWORD
    return [ErrorCode.PASSWORD_LENGTH_INVALID] if too_short else []


def login_response(session: Session) -> dict[str, Any]:
    user = session.user
    return {
        "id": user.id,
        "name": user.name,
        "phone": user.phone,
        "imageId": user.image_id,
        "eventId": session.event_id,
        "accessToken": session.access_token,
    }
