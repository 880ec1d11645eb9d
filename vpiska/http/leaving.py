"""`POST /api/v1/users/delete`: an account deleted for good (vpiska/account_deletion.py)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from vpiska.account_deletion import AccountDeletion
from vpiska.accounts import Accounts
from vpiska.config import Config
from vpiska.errors import ErrorCode
from vpiska.http.auth import caller
from vpiska.http.body import json_object, require, text
from vpiska.http.client_address import client_address
from vpiska.http.envelope import success


def leaving_routes(config: Config, accounts: Accounts, deletion: AccountDeletion) -> Blueprint:
    routes = Blueprint("leaving", __name__, url_prefix="/api/v1/users")

    @routes.post("/delete")
    async def delete() -> Any:
        identity = await caller(accounts)
        password = text(await json_object(config.max_json_bytes), "password")
        require((not password, ErrorCode.PASSWORD_IS_EMPTY))
        address = client_address(request.scope, config.trusted_proxies)
        await deletion.delete(identity, password, address)
        return success(None)

    return routes
