"""Wiring: the services one running server shares, and the Quart app that exposes them."""

from __future__ import annotations

import dataclasses

from quart_trio import QuartTrio

from vpiska.accounts import Accounts
from vpiska.actors import EventSupervisor
from vpiska.auth import Passwords, Tokens
from vpiska.config import Config
from vpiska.http.body import close_if_body_unread
from vpiska.http.errors import install_error_handlers
from vpiska.http.events import events_routes
from vpiska.http.media import media_routes
from vpiska.http.users import users_routes
from vpiska.media import MediaLibrary
from vpiska.store import MediaFiles, Store

# Multipart framing around an upload of exactly MAX_UPLOAD_BYTES.
MULTIPART_OVERHEAD = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Services:
    config: Config
    store: Store
    tokens: Tokens
    accounts: Accounts
    media: MediaLibrary
    events: EventSupervisor

    @classmethod
    def build(cls, config: Config, store: Store, events: EventSupervisor) -> Services:
        tokens = Tokens(config)
        return cls(
            config=config,
            store=store,
            tokens=tokens,
            accounts=Accounts(store, tokens, Passwords(config)),
            media=MediaLibrary(store, MediaFiles(config.media_path)),
            events=events,
        )


def create_app(services: Services) -> QuartTrio:
    config = services.config
    app = QuartTrio("vpiska")
    # The outer cap: handlers bound what they read themselves; this stops Quart buffering a
    # body no handler reads.
    app.config["MAX_CONTENT_LENGTH"] = (
        max(config.max_upload_bytes, config.max_json_bytes) + MULTIPART_OVERHEAD
    )
    app.register_blueprint(users_routes(config, services.accounts, services.tokens, services.media))
    app.register_blueprint(media_routes(config, services.media))
    app.register_blueprint(events_routes(config, services.tokens, services.events,
                                         services.store, services.media))
    install_error_handlers(app)
    close_if_body_unread(app)
    return app
