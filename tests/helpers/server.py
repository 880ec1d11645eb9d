"""The server a test talks to: `Server` (what the `server` fixture of tests/conftest.py yields,
and what the cluster fixtures make of a node), its configuration, and the write paths the
socket tests run on."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest

from vpiska.config import Config, StoreLocation
from vpiska.store import Store


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    """A configuration on 127.0.0.1, a port the kernel picks, and a store and media of the
    test's own under `tmp_path`."""
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "store": StoreLocation("sqlite", str(tmp_path / "vpiska.db")),
        "media_path": tmp_path / "media",
    }
    return Config(**(settings | overrides))


@dataclasses.dataclass
class Server:
    """A running vpiska a test talks to over HTTP, and the store it serves on."""

    url: str
    config: Config
    http: httpx.AsyncClient
    store: Store  # the store the server runs on

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    async def call(self, path: str, body: Any = None, *, token: str | None = None,
                   **kwargs: Any) -> dict[str, Any]:
        """POST a JSON body (or the given content) and return the envelope, checking its form."""
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            kwargs["json"] = body
        response = await self.http.post(path, headers=headers, **kwargs)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        envelope: dict[str, Any] = response.json()
        assert list(envelope) == ["isSuccess", "errors", "result"]
        return envelope

    async def ok(self, path: str, body: Any = None, *, token: str | None = None,
                 **kwargs: Any) -> Any:
        envelope = await self.call(path, body, token=token, **kwargs)
        assert envelope["isSuccess"] is True, envelope
        assert envelope["errors"] is None
        return envelope["result"]

    async def codes(self, path: str, body: Any = None, *, token: str | None = None,
                    **kwargs: Any) -> list[str]:
        envelope = await self.call(path, body, token=token, **kwargs)
        assert envelope["isSuccess"] is False, envelope
        assert envelope["result"] is None
        return [error["errorCode"] for error in envelope["errors"]]

    async def sign_up(self, name: str = "ann", phone: str = "9001234567",
                      password: str = "secret1") -> dict[str, Any]:
        result: dict[str, Any] = await self.ok(
            "/api/v1/users/create",
            {"name": name, "phone": phone, "password": password, "confirmPassword": password},
        )
        return result


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


# A test client drops an idle connection after 1 s: the server closes idle ones after
# hypercorn's keep_alive_timeout (5 s) or two ping intervals (4 s with the shortest the tests
# use), and a client reusing one as the server closes it gets no response. httpx's own default
# (5 s) left the two timers racing.
CLIENT_LIMITS = httpx.Limits(keepalive_expiry=1.0)


# The live-room modules run every test on both write paths: hypercorn with vpiska's adapter
# (direct socket writes) and plain hypercorn (ASGI sends), which serves when the adapter does
# not fit the installed hypercorn.
BOTH_WRITE_PATHS = pytest.mark.parametrize("write_path", ["adapted", "stock-hypercorn"])
# The WebSocket modules also run the adapter's path through hypercorn's own protocol, which
# serves the handshakes direct_websocket.py leaves to h11 (and every one without
# DIRECT_WEBSOCKETS).
EVERY_WEBSOCKET_PATH = pytest.mark.parametrize(
    "write_path", ["adapted", "adapted-h11", "stock-hypercorn"])


def stock_hypercorn_fails(bug: str, *, every_run: bool = True) -> pytest.MarkDecorator:
    """EVERY_WEBSOCKET_PATH, with the stock-hypercorn case expected to fail because of `bug`, a
    defect of hypercorn 0.18 that vpiska/transport/ fixes (docs/transport.md lists them).

    Strict: once a hypercorn release fixes it, the case passes and the suite says so. A bug
    that is a race stock hypercorn loses on some runs only (`every_run=False`) cannot be held
    to that: its case may pass, and the reason says so."""
    reason = f"hypercorn 0.18: {bug}" + ("" if every_run else " (a race: some runs only)")
    return pytest.mark.parametrize("write_path", [
        "adapted", "adapted-h11",
        pytest.param("stock-hypercorn",
                     marks=pytest.mark.xfail(strict=every_run, reason=reason))])
