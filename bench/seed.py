"""Store files seeded before start-up, without the HTTP API.

Why: vpiska loads every open event of its store at start-up, so a seeded file is a server with
10,000 open events the moment it listens, where creating them over HTTP would cost an argon2
sign-up (~33 ms) each. The WebSocket stores also hold MEMBERS users, whose forged tokens the
load generator uses (vpiska refuses a token of a user its store does not have). Seeding goes
through vpiska's own store API, so the rows are exactly what the server writes. It takes
~15 s, so the files are kept in bench/.cache under a hash of the code that decides their
contents (the store, the records, the password hash, this file) and made again whenever any
of it changes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

from vpiska.auth import Passwords
from vpiska.config import Config
from vpiska.domain import Coordinates, Event, User, utc_now
from vpiska.store.sqlite import SqliteStore

LOGIN_PHONE = "9000000000"
LOGIN_PASSWORD = "bench-password"
MAP_SIDE = 100  # the map of the HTTP scenario is a MAP_SIDE × MAP_SIDE grid of open events
MEMBERS = 10_000  # users of the WebSocket stores: member i of a room is user i
SOAK_ROOMS = 100  # open events of the soak store
# The storm's store (bench/storm.py): its members' rooms, then a pool from which the rooms kept
# on node B are those the cluster places there (about half).
STORM_ROOMS = 100
STORM_POOL = 40
# The cluster's map: only the 11 × 11 events of events/range's window (the same answer as the
# 10,000-event map). A cluster node started on 10,000 open events never settles (its leases
# churn; bench/README.md "Cluster"), so the cluster section cannot be measured on that map.
CLUSTER_SIDE = 11


@dataclass(frozen=True)
class Seeds:
    """Template store files, copied into each fresh server's data directory."""

    room_db: Path  # one owner, one open event: the room every WebSocket scenario joins
    room_event_id: str
    map_db: Path  # MAP_SIDE² open events (one per owner) plus the login user
    map_event_id: str  # one of them, for events/get
    soak_db: Path  # SOAK_ROOMS open events
    soak_event_ids: tuple[str, ...]
    member_ids: tuple[str, ...]  # MEMBERS users in room_db and soak_db
    cluster_db: Path  # CLUSTER_SIDE² open events around the map's centre
    cluster_event_id: str  # the middle one, for events/get
    storm_db: Path  # STORM_ROOMS + STORM_POOL open events, and the MEMBERS users
    storm_event_ids: tuple[str, ...]


def make_seeds(cache: Path) -> Seeds:
    """The seeded files for the current code: from the cache, or made now."""
    directory = cache / f"seeds-{_code_hash()}"
    index = directory / "seeds.json"
    if index.exists():
        saved = json.loads(index.read_text())
        return Seeds(Path(saved["room_db"]), saved["room_event_id"], Path(saved["map_db"]),
                     saved["map_event_id"], Path(saved["soak_db"]),
                     tuple(saved["soak_event_ids"]), tuple(saved["member_ids"]),
                     Path(saved["cluster_db"]), saved["cluster_event_id"],
                     Path(saved["storm_db"]), tuple(saved["storm_event_ids"]))
    for old in cache.glob("seeds-*"):  # older seeds are of older code
        shutil.rmtree(old, ignore_errors=True)
    directory.mkdir(parents=True)
    seeds = trio.run(_make_seeds, directory)
    index.write_text(json.dumps({k: v if isinstance(v, tuple) else str(v)
                                 for k, v in asdict(seeds).items()}))
    return seeds


def _code_hash() -> str:
    import vpiska

    package = Path(vpiska.__file__).parent
    digest = hashlib.sha256()
    for path in [*sorted((package / "store").glob("*.py")), package / "domain.py",
                 package / "auth.py", Path(__file__)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


async def _make_seeds(directory: Path) -> Seeds:
    password_hash = await Passwords(Config()).hash(LOGIN_PASSWORD)  # argon2id, once
    room_db, map_db = directory / "room.db", directory / "map.db"
    soak_db = directory / "soak.db"
    member_ids = tuple(str(uuid.uuid4()) for _ in range(MEMBERS))
    room_ids = await _seed(room_db, 1, password_hash, member_ids)
    map_ids = await _seed(map_db, MAP_SIDE * MAP_SIDE, password_hash, ())
    soak_ids = await _seed(soak_db, SOAK_ROOMS, password_hash, member_ids)
    cluster_db = directory / "cluster.db"
    cluster_ids = await _seed(cluster_db, CLUSTER_SIDE ** 2, password_hash, (), CLUSTER_SIDE)
    storm_db = directory / "storm.db"
    storm_ids = await _seed(storm_db, STORM_ROOMS + STORM_POOL, password_hash, member_ids)
    return Seeds(room_db, room_ids[0], map_db, map_ids[len(map_ids) // 2], soak_db,
                 tuple(soak_ids), member_ids, cluster_db, cluster_ids[len(cluster_ids) // 2],
                 storm_db, tuple(storm_ids))


async def _seed(path: Path, events: int, password_hash: str,
                member_ids: tuple[str, ...], side: int = MAP_SIDE) -> list[str]:
    """`events` owners with one open event each on a side × side grid centred on the map's
    centre (the whole map when side is MAP_SIDE), the login user (who owns nothing) and the
    members. Returns the event ids in creation order."""
    low = MAP_SIDE // 2 - side // 2
    store = await SqliteStore.open(path)
    try:
        await store.add_user(User(str(uuid.uuid4()), "bench-login", LOGIN_PHONE, password_hash))
        for i, member_id in enumerate(member_ids):
            await store.add_user(User(member_id, f"member-{i}", f"7{i:09d}", password_hash))
        ids = []
        for i in range(events):
            owner = User(str(uuid.uuid4()), f"owner-{i}", f"8{i:09d}", password_hash)
            await store.add_user(owner)
            event = Event(str(uuid.uuid4()), owner.id, f"party {i}", f"street {i}",
                          Coordinates(float(low + i % side), float(low + i // side)), utc_now())
            await store.add_event(event)
            ids.append(event.id)
    finally:
        await store.aclose()
    return ids


def install_store(template: Path, data_dir: Path) -> None:
    """Give a fresh server its own copy of a template (vpiska's default path in DATA_DIR)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, data_dir / "vpiska.db")
