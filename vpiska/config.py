"""Configuration: read once from the environment into one immutable object.

Every variable has a default so a bare machine can `make run`; an invalid value stops start-up
with one line naming the variable, because a server that half-starts with a typo in its port or
key is worse than one that refuses to start.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

DEFAULT_JWT_KEY = "vpiska_secretkey!123"
MEDIA_STORES = ("files", "gridfs")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_N = TypeVar("_N", int, float)


class ConfigError(Exception):
    """An environment variable holds a value vpiska cannot use."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclasses.dataclass(frozen=True)
class StoreLocation:
    """Where data lives: `kind` is "sqlite" (a file path) or "mongodb" (a URI)."""

    kind: str
    target: str


@dataclasses.dataclass(frozen=True)
class Config:
    # Loopback unless told otherwise: with the public default JWT_KEY anyone could forge tokens,
    # so such a server is reachable from elsewhere only when SERVER_HOST says so.
    host: str = "127.0.0.1"
    port: int = 5000
    store: StoreLocation = StoreLocation("sqlite", "data/vpiska.db")
    db_name: str = "vpiska"
    media_path: Path = Path("data/media")
    # Where media bytes live: "files" (one file per media under media_path, on this machine)
    # or "gridfs" (MongoDB's GridFS, shared by every node that shares the database).
    media_store: str = "files"
    jwt_key: str = DEFAULT_JWT_KEY
    jwt_issuer: str = "VpiskaServer"
    jwt_audience: str = "VpiskaClient"
    jwt_lifetime_days: int = 3
    hash_key: bytes = bytes.fromhex("fbac497e4b44564f831f78d539b81a0c")
    trace_requests: bool = False
    log_level: str = "INFO"
    max_json_bytes: int = 64 * 1024
    max_upload_bytes: int = 20 * 1024 * 1024
    # Concurrent argon2 computations; each holds ~12 MiB, and more than the core count only queues.
    password_hash_concurrency: int = 2
    # Sign-ups and logins one client address may start per minute (a burst of as many, then
    # one every 60/n s); 0: no per-address limit (load tests). vpiska/signin_limits.py.
    signin_rate_per_minute: int = 30
    # How long a refused sign-in waits for its answer: a guesser resending at once is slowed
    # to one attempt per connection per pause. 0: answered at once. vpiska/signin_limits.py.
    signin_refusal_pause_ms: int = 1000
    # Peers whose X-Forwarded-For names the client (vpiska/http/client_address.py).
    trusted_proxies: tuple[Network, ...] = ()
    # Events: the live room.
    actor_inbox_size: int = 1024
    member_outbox_frames: int = 256
    event_update_interval_ms: int = 250
    # Count-only eventUpdated frames one event may cost per second: a room of more members than
    # this hears its count less often than every interval (a 5,000-member room every 5 s).
    count_frames_per_second: int = 1000
    actor_reply_timeout_seconds: float = 10.0
    actor_max_restarts: int = 3
    actor_restart_window_seconds: float = 5.0
    max_chat_chars: int = 2000
    # Chat lines an event's actor keeps for events/get (the store is read only for a longer
    # chat): about 200 bytes a line, so at most ~100 KiB per open event.
    chat_memory_lines: int = 500
    chat_rate_per_second: float = 10.0
    chat_burst: int = 20
    ws_ping_seconds: float = 20.0
    ws_max_frame_bytes: int = 64 * 1024
    # A request body must have arrived this long after its request's head, else the connection
    # is closed: a body trickled a byte at a time holds no connection (and handler) for long.
    body_timeout_seconds: float = 30.0
    shutdown_grace_seconds: float = 10.0
    # GET /readyz answers 503 when a store ping takes longer than this.
    ready_timeout_seconds: float = 2.0
    # Use vpiska/transport/ (only ever on the hypercorn versions it was tested on).
    hypercorn_adapter: bool = True
    # With the adapter: serve ordinary event WebSocket handshakes off the socket, below
    # hypercorn (vpiska/transport/direct_websocket.py).
    direct_websockets: bool = True
    # Event WebSocket handshakes in progress (upgrade read, member not yet in its room) past
    # which a new one is answered 503 with Retry-After at once (vpiska/transport/admission.py);
    # 0: no bound.
    max_pending_handshakes: int = 1024
    # The cluster (vpiska/cluster): with no Redis, one process serves alone.
    redis_url: str | None = None
    lease_ttl_seconds: float = 5.0
    workers: int = 1
    # Let other processes listen on the same port (SO_REUSEPORT); WORKERS > 1 implies it.
    reuse_port: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Build the configuration from `env` (default: `os.environ`); raise ConfigError."""
        env = os.environ if env is None else env
        read = _Reader(env)
        data_dir = Path(read.text("DATA_DIR", "data"))
        jwt_key = read.text("JWT_KEY", cls.jwt_key, allow_empty=False)
        store = _store_location(env.get("DB_CONNECTION", ""), data_dir)
        return cls(
            host=read.text("SERVER_HOST", cls.host if jwt_key == DEFAULT_JWT_KEY else "0.0.0.0"),
            port=read.integer("SERVER_PORT", cls.port, low=0, high=65535),
            store=store,
            db_name=read.text("DB_NAME", cls.db_name),
            media_path=Path(read.text("MEDIA_PATH", str(data_dir / "media"))),
            media_store=_media_store(read.text("MEDIA_STORE", "").strip().lower(), store),
            jwt_key=jwt_key,
            jwt_issuer=read.text("JWT_ISSUER", cls.jwt_issuer),
            jwt_audience=read.text("JWT_AUDIENCE", cls.jwt_audience),
            jwt_lifetime_days=read.integer("JWT_LIFETIME_DAYS", cls.jwt_lifetime_days, low=1),
            hash_key=read.hex("HASH_KEY", cls.hash_key),
            trace_requests=read.boolean("LOGGING_TRACE_REQUESTS", cls.trace_requests),
            log_level=read.choice(
                "LOG_LEVEL", cls.log_level, ("DEBUG", "INFO", "WARNING", "ERROR")
            ),
            max_json_bytes=read.integer("MAX_JSON_BYTES", cls.max_json_bytes, low=1024),
            max_upload_bytes=read.integer("MAX_UPLOAD_BYTES", cls.max_upload_bytes, low=1),
            password_hash_concurrency=read.integer(
                "PASSWORD_HASH_CONCURRENCY", cls.password_hash_concurrency, low=1
            ),
            signin_rate_per_minute=read.integer(
                "SIGNIN_RATE_PER_MINUTE", cls.signin_rate_per_minute, low=0
            ),
            signin_refusal_pause_ms=read.integer(
                "SIGNIN_REFUSAL_PAUSE_MS", cls.signin_refusal_pause_ms, low=0, high=10_000
            ),
            trusted_proxies=_networks("TRUSTED_PROXIES", env.get("TRUSTED_PROXIES", "")),
            actor_inbox_size=read.integer("ACTOR_INBOX_SIZE", cls.actor_inbox_size, low=1),
            member_outbox_frames=read.integer(
                "MEMBER_OUTBOX_FRAMES", cls.member_outbox_frames, low=1
            ),
            event_update_interval_ms=read.integer(
                "EVENT_UPDATE_INTERVAL_MS", cls.event_update_interval_ms, low=0
            ),
            count_frames_per_second=read.integer(
                "COUNT_FRAMES_PER_SECOND", cls.count_frames_per_second, low=1
            ),
            actor_reply_timeout_seconds=read.number(
                "ACTOR_REPLY_TIMEOUT_SECONDS", cls.actor_reply_timeout_seconds, low=0.001
            ),
            actor_max_restarts=read.integer("ACTOR_MAX_RESTARTS", cls.actor_max_restarts, low=0),
            actor_restart_window_seconds=read.number(
                "ACTOR_RESTART_WINDOW_SECONDS", cls.actor_restart_window_seconds, low=0.001
            ),
            max_chat_chars=read.integer("MAX_CHAT_CHARS", cls.max_chat_chars, low=1),
            chat_memory_lines=read.integer("CHAT_MEMORY_LINES", cls.chat_memory_lines, low=0),
            chat_rate_per_second=read.number(
                "CHAT_RATE_PER_SECOND", cls.chat_rate_per_second, low=0.001
            ),
            chat_burst=read.integer("CHAT_BURST", cls.chat_burst, low=1),
            ws_ping_seconds=read.number("WS_PING_SECONDS", cls.ws_ping_seconds, low=0.01),
            ws_max_frame_bytes=read.integer("WS_MAX_FRAME_BYTES", cls.ws_max_frame_bytes, low=256),
            body_timeout_seconds=read.number(
                "BODY_TIMEOUT_SECONDS", cls.body_timeout_seconds, low=0.001
            ),
            shutdown_grace_seconds=read.number(
                "SHUTDOWN_GRACE_SECONDS", cls.shutdown_grace_seconds, low=0
            ),
            ready_timeout_seconds=read.number(
                "READY_TIMEOUT_SECONDS", cls.ready_timeout_seconds, low=0.001
            ),
            hypercorn_adapter=read.boolean("HYPERCORN_ADAPTER", cls.hypercorn_adapter),
            direct_websockets=read.boolean("DIRECT_WEBSOCKETS", cls.direct_websockets),
            max_pending_handshakes=read.integer(
                "MAX_PENDING_HANDSHAKES", cls.max_pending_handshakes, low=0
            ),
            redis_url=_redis_url(env.get("REDIS_URL", "")),
            lease_ttl_seconds=read.number("LEASE_TTL_SECONDS", cls.lease_ttl_seconds, low=0.3),
            workers=_workers(read.integer("WORKERS", cls.workers, low=1, high=256), env),
            reuse_port=read.boolean("SERVER_REUSE_PORT", cls.reuse_port),
        )

    @property
    def uses_default_jwt_key(self) -> bool:
        return self.jwt_key == DEFAULT_JWT_KEY


SENTINEL_SCHEME = "redis+sentinel"


@dataclasses.dataclass(frozen=True)
class RedisSentinel:
    """A Redis found through its Sentinels: `REDIS_URL` as
    `redis+sentinel://[[user]:password@]host:port[,host:port…]/service[/db]`.

    The nodes ask the Sentinels (`sentinels`) which server is the primary of `service` and
    follow it when they fail over. `username`/`password` are those of the Redis servers; the
    Sentinels are asked without any."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def sentinel_of(url: str) -> RedisSentinel | None:
    """The Sentinels `url` names; None if it names one Redis (redis://, rediss://, unix://).
    Error handling: ValueError saying what is wrong with a malformed redis+sentinel:// URL."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != SENTINEL_SCHEME:
        return None
    authority, _, path = rest.partition("/")
    credentials, _, hosts = authority.rpartition("@")
    username, _, password = credentials.partition(":")
    sentinels = []
    for host_port in hosts.split(","):
        host, _, port = host_port.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{host_port!r} is not host:port (a Sentinel's, 26379 usually)")
        sentinels.append((host.strip("[]"), int(port)))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("no service name: redis+sentinel://host:26379/<service>")
    if db and not db.isdigit():
        raise ValueError(f"{db!r} is not a database number")
    return RedisSentinel(tuple(sentinels), service, int(db or 0), username or None,
                         password or None)


def _redis_url(value: str) -> str | None:
    if not value:
        return None
    try:
        if sentinel_of(value) is not None:
            return value
    except ValueError as malformed:
        raise ConfigError("REDIS_URL", f"{SENTINEL_SCHEME}:// URL: {malformed}") from None
    if urlsplit(value).scheme.lower() not in ("redis", "rediss", "unix"):
        raise ConfigError("REDIS_URL", f"{value!r} is not a redis://, rediss://, unix:// or"
                                       f" {SENTINEL_SCHEME}:// URL")
    return value


def _media_store(chosen: str, store: StoreLocation) -> str:
    """MEDIA_STORE, or the default for the store: GridFS beside MongoDB, so nodes on other
    machines serve the same bytes; files beside sqlite, which one machine holds anyway."""
    if not chosen:
        return "gridfs" if store.kind == "mongodb" else "files"
    if chosen not in MEDIA_STORES:
        raise ConfigError("MEDIA_STORE", f"{chosen!r} is not one of {', '.join(MEDIA_STORES)}")
    if chosen == "gridfs" and store.kind != "mongodb":
        raise ConfigError("MEDIA_STORE", "gridfs keeps media in MongoDB, and DB_CONNECTION "
                          f"selects {store.kind}: set DB_CONNECTION=mongodb://… or "
                          "MEDIA_STORE=files")
    return chosen


def _networks(variable: str, value: str) -> tuple[Network, ...]:
    """Addresses and CIDR blocks, separated by commas or spaces: `10.0.0.1, 10.1.0.0/16`."""
    networks = []
    for item in value.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(variable, f"{item!r} is not an IP address or network") from None
    return tuple(networks)


def _workers(workers: int, env: Mapping[str, str]) -> int:
    if workers > 1 and not env.get("REDIS_URL"):
        raise ConfigError("WORKERS", "more than one node needs REDIS_URL: nodes share Redis")
    return workers


def _store_location(value: str, data_dir: Path) -> StoreLocation:
    """`mongodb://` and `mongodb+srv://` select MongoDB; empty selects `<DATA_DIR>/vpiska.db`;
    `sqlite:///path` or a bare path selects that sqlite file; any other scheme is a typo."""
    if not value:
        return StoreLocation("sqlite", str(data_dir / "vpiska.db"))
    scheme = urlsplit(value).scheme.lower()
    if scheme in ("mongodb", "mongodb+srv"):
        return StoreLocation("mongodb", value)
    if value.startswith("sqlite:///"):
        # SQLAlchemy's spelling: sqlite:///relative.db, sqlite:////absolute.db
        path = value.removeprefix("sqlite:///")
        if not path:
            raise ConfigError("DB_CONNECTION", "sqlite:/// needs a file path: sqlite:///data/x.db")
        return StoreLocation("sqlite", path)
    if scheme and "://" in value:
        raise ConfigError(
            "DB_CONNECTION",
            f"unknown scheme {scheme!r}; use mongodb://, mongodb+srv://, sqlite:/// or a file path",
        )
    return StoreLocation("sqlite", value)


class _Reader:
    """Parses one variable at a time so every error names the variable it came from."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str, *, allow_empty: bool = True) -> str:
        value = self._env.get(name)
        if value is None:
            return default
        if not value and not allow_empty:
            raise ConfigError(name, "must not be empty")
        return value

    def integer(self, name: str, default: int, *, low: int | None = None,
                high: int | None = None) -> int:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, f"{raw!r} is not a whole number") from None
        return self._bounded(name, value, low, high)

    def number(self, name: str, default: float, *, low: float | None = None) -> float:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, f"{raw!r} is not a number") from None
        return self._bounded(name, value, low, None)

    def boolean(self, name: str, default: bool) -> bool:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, f"{raw!r} is not true or false")

    def hex(self, name: str, default: bytes) -> bytes:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return bytes.fromhex(raw)
        except ValueError:
            raise ConfigError(name, f"{raw!r} is not a hex string") from None

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        if raw.upper() not in options:
            raise ConfigError(name, f"{raw!r} is not one of {', '.join(options)}")
        return raw.upper()

    @staticmethod
    def _bounded(name: str, value: _N, low: _N | None, high: _N | None) -> _N:
        if low is not None and value < low:
            raise ConfigError(name, f"{value} is below the minimum {low}")
        if high is not None and value > high:
            raise ConfigError(name, f"{value} is above the maximum {high}")
        return value
