"""Wiring: the services one running server shares, and the ASGI app that exposes them."""

from __future__ import annotations

import dataclasses
from typing import Any

from quart_trio import QuartTrio

from vpiska.account_deletion import AccountDeletion
from vpiska.accounts import Accounts
from vpiska.actors.rooms import Rooms
from vpiska.auth import Passwords, Tokens
from vpiska.config import Config
from vpiska.http.body import close_if_body_unread
from vpiska.http.bounded_body import BoundedBodyConnection, BoundedRequest
from vpiska.http.errors import install_error_handlers
from vpiska.http.events import events_routes, json_routes
from vpiska.http.host_check import HostCheck
from vpiska.http.json_routes import JsonRoutes
from vpiska.http.leaving import leaving_routes
from vpiska.http.media import media_routes
from vpiska.http.member_removal import member_removal_routes
from vpiska.http.probes import probe_routes
from vpiska.http.request_id import install_request_ids
from vpiska.http.scrape import count_requests, metrics_routes
from vpiska.http.swagger import swagger_routes
from vpiska.http.tracing import install_request_tracing
from vpiska.http.upgrade_required import upgrade_required_routes
from vpiska.http.users import signin_routes, users_routes
from vpiska.http.websocket import EventSocketEndpoint
from vpiska.low_priority_threads import LowPriorityThreads
from vpiska.media import MediaLibrary
from vpiska.metrics import registry_for
from vpiska.signin_limits import LocalCounters, SigninCounters, SigninLimits
from vpiska.store import Store, media_bytes

# Multipart framing around an upload of exactly MAX_UPLOAD_BYTES.
MULTIPART_OVERHEAD = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Services:
    config: Config
    store: Store
    tokens: Tokens
    accounts: Accounts
    media: MediaLibrary
    events: Rooms  # the EventSupervisor on one node, the cluster node in a cluster
    signin: SigninLimits

    @classmethod
    def build(cls, config: Config, store: Store, events: Rooms,
              signin_counters: SigninCounters | None = None,
              low_priority: LowPriorityThreads | None = None) -> Services:
        """`signin_counters`: where the sign-in limits count (default: in this process);
        `low_priority`: where suspected guessers' password hashes run (vpiska/auth.py)."""
        tokens = Tokens(config)
        signin = SigninLimits(signin_counters or LocalCounters(), config.signin_rate_per_minute,
                              config.signin_refusal_pause_ms / 1000)
        return cls(
            config=config,
            store=store,
            tokens=tokens,
            accounts=Accounts(store, tokens, Passwords(config, low_priority), signin),
            media=MediaLibrary(store, media_bytes(config, store)),
            events=events,
            signin=signin,
        )


def create_app(services: Services) -> Any:
    """The whole ASGI app: the hottest JSON endpoints and the event WebSocket in front of the
    Quart app of every other route."""
    config = services.config
    quart_app = create_quart_app(services)
    sockets = EventSocketEndpoint(quart_app, config, services.accounts, services.events,
                                  services.store)
    in_front = (json_routes(services.events, services.store)
                | signin_routes(config, services.accounts, services.signin))
    return HostCheck(JsonRoutes(sockets, in_front,
                                max_json_bytes=config.max_json_bytes,
                                trace=config.trace_requests))


def create_quart_app(services: Services) -> QuartTrio:
    config = services.config
    app = QuartTrio("vpiska", static_folder=None)  # no /static route: every route is documented
    app.request_class = BoundedRequest  # a body is taken only as fast as it is read
    app.asgi_http_class = BoundedBodyConnection
    install_request_ids(app)  # first: every hook and handler after it logs with the id
    # The outer cap: handlers bound what they read themselves; this stops Quart buffering a
    # body no handler reads.
    app.config["MAX_CONTENT_LENGTH"] = (
        max(config.max_upload_bytes, config.max_json_bytes) + MULTIPART_OVERHEAD
    )
    app.register_blueprint(users_routes(config, services.accounts, services.media,
                                        services.signin))
    app.register_blueprint(media_routes(config, services.media))
    app.register_blueprint(events_routes(config, services.accounts, services.events,
                                         services.store, services.media))
    app.register_blueprint(member_removal_routes(config, services.accounts, services.events))
    app.register_blueprint(leaving_routes(config, services.accounts, AccountDeletion(
        services.accounts, services.store, services.events, services.media)))
    app.register_blueprint(upgrade_required_routes())
    app.register_blueprint(swagger_routes())
    app.register_blueprint(probe_routes(app, services.store, services.events,
                                        config.ready_timeout_seconds))
    app.register_blueprint(metrics_routes(registry_for(services.events.live_stats)))
    install_error_handlers(app)
    close_if_body_unread(app)
    count_requests(app)
    if config.trace_requests:
        install_request_tracing(app)
    return app
