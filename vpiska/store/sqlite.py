"""The embedded store: one sqlite file in WAL mode, so `make run` needs no database server.

sqlite serialises writers anyway, so one connection, used by one thread of its own
(vpiska/store/connection_thread.py), is both the simplest correct use of its thread rules and as
fast as a pool for writes; that thread also hands a chat batch's write over and back cheaper
than a worker thread per call. `synchronous=NORMAL` in WAL mode survives a killed
process (the WAL is in the OS page cache); only a power cut can lose the last transactions.

Fencing (vpiska/store/base.py): the claimed epoch is the column `events.epoch` (0: never
claimed), the node that claimed it `events.claimant` ('': none, or claimed before claimants were
kept). A fenced write is one `BEGIN IMMEDIATE` transaction that reads the epoch and writes:
IMMEDIATE takes the file's write lock before the read, so no claim (by this connection or
another process's) can commit between the check and the write. An unfenced write (`epoch=None`)
runs exactly as before fencing.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import trio

from vpiska import metrics
from vpiska.domain import ChatMessage, Coordinates, Event, EventMedia, Media, User
from vpiska.errors import DomainError, ErrorCode
from vpiska.store.base import check_claim, check_epoch, clash_error
from vpiska.store.connection_thread import ConnectionThread

_T = TypeVar("_T")
_CALL_DURATION = metrics.STORE_CALL_DURATION.labels(store="sqlite")

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    phone_code TEXT NOT NULL,
    phone TEXT NOT NULL UNIQUE,
    image_id TEXT,
    password TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS users_by_image ON users(image_id);
CREATE TABLE IF NOT EXISTS media (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    last_modified_date TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    state INTEGER NOT NULL,
    x REAL NOT NULL,
    y REAL NOT NULL,
    created_at TEXT NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    claimant TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS one_open_event_per_owner ON events(owner_id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS events_by_state ON events(state, created_at);
CREATE TABLE IF NOT EXISTS event_media (
    event_id TEXT NOT NULL,
    media_id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    UNIQUE (event_id, media_id)
);
CREATE INDEX IF NOT EXISTS event_media_by_media ON event_media(media_id);
CREATE TABLE IF NOT EXISTS chat_messages (
    event_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    user_image_id TEXT NOT NULL,
    message TEXT NOT NULL,
    sent_at INTEGER,
    client_id TEXT,
    PRIMARY KEY (event_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_bans (
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (event_id, user_id)
) WITHOUT ROWID;
"""
# After `_migrate`: an older file's chat_messages has no client_id column before it.
CHAT_ID_INDEX = """
CREATE INDEX IF NOT EXISTS chat_messages_by_client_id ON chat_messages(event_id, user_id, client_id)
WHERE client_id IS NOT NULL
"""

OPEN, CLOSED = 0, 1


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a file made by an older vpiska up to SCHEMA (whose CREATE TABLE IF NOT EXISTS
    leaves an existing table as it is). In one IMMEDIATE transaction, so two processes opening
    one old file at once do not both add the column."""
    db.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
        if "epoch" not in columns:  # before fencing: every event is unclaimed
            db.execute("ALTER TABLE events ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0")
        if "claimant" not in columns:  # claimed before claimants were kept: by nobody known
            db.execute("ALTER TABLE events ADD COLUMN claimant TEXT NOT NULL DEFAULT ''")
        chat_columns = {row[1] for row in db.execute("PRAGMA table_info(chat_messages)")}
        if "sent_at" not in chat_columns:  # lines stored before their time was kept: NULL
            db.execute("ALTER TABLE chat_messages ADD COLUMN sent_at INTEGER")
        if "client_id" not in chat_columns:  # and before v2 clients gave them ids
            db.execute("ALTER TABLE chat_messages ADD COLUMN client_id TEXT")
        db.execute(CHAT_ID_INDEX)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


# Whether an event (open or closed) lists a media or a user's image is it. The join skips
# event_media rows of an event that does not exist (add_event_media inserts them blindly).
_MEDIA_REFERENCES = """
SELECT 1 FROM event_media JOIN events ON events.id = event_media.event_id
WHERE event_media.media_id = ?
UNION ALL
SELECT 1 FROM users WHERE image_id = ?
LIMIT 1
"""


# Opening while another process (a node of the cluster on the same file) is in the middle of
# WAL recovery or a checkpoint can answer "database is locked" without waiting on the busy
# timeout; so a few tries, this far apart.
OPEN_TRIES = 50
# How often the WAL is copied back into the database file (`SqliteStore.checkpoints`).
CHECKPOINT_SECONDS = 1.0
OPEN_RETRY_SECONDS = 0.1


def _enter_wal(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode (once per file; a no-op when it is already)."""
    for attempt in range(OPEN_TRIES):
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == OPEN_TRIES - 1:
                raise
            time.sleep(OPEN_RETRY_SECONDS)  # in the opening worker thread, not the event loop


class SqliteStore:
    """Store on one sqlite file. Resource handling: `open` creates the file and schema and
    starts the connection's thread; `aclose` closes the connection after the calls made before
    it, and ends the thread."""

    def __init__(self, connection: sqlite3.Connection, path: str | Path,
                 thread: ConnectionThread) -> None:
        self._db = connection
        self._path = path
        self._thread = thread
        # The ping's own connection and thread slot (`ping`), opened by the first ping.
        self._ping_db: sqlite3.Connection | None = None
        self._ping_limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: str | Path) -> SqliteStore:
        def connect() -> sqlite3.Connection:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA busy_timeout=5000")
                _enter_wal(db)
                db.execute("PRAGMA synchronous=NORMAL")
                # No checkpoint inside a commit: `checkpoints` runs them beside the writes.
                db.execute("PRAGMA wal_autocheckpoint=0")
                db.executescript(SCHEMA)
                _migrate(db)
            except BaseException:
                db.close()
                raise
            return db

        thread = ConnectionThread("sqlite store")
        thread.start()
        try:
            return cls(await thread.run(connect), path, thread)
        except BaseException:
            with trio.CancelScope(shield=True):
                await thread.aclose()
            raise

    async def _run(self, fn: Callable[..., _T], *args: Any,
                   limiter: trio.CapacityLimiter | None = None) -> _T:
        """`fn(*args)` on the connection's thread, or with `limiter` on one of trio's (the
        ping, which must not wait behind the calls: `ping`)."""
        with _CALL_DURATION.time():
            if limiter is None:
                return await self._thread.run(fn, *args)
            return await trio.to_thread.run_sync(fn, *args, limiter=limiter)

    @contextmanager
    def _transaction(self, begin: str = "BEGIN") -> Iterator[None]:
        """One transaction around the block (the connection autocommits every statement
        otherwise): committed when the block ends, rolled back when it raises."""
        self._db.execute(begin)
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def aclose(self) -> None:
        await self._run(self._db.close)
        await self._thread.aclose()
        if self._ping_db is not None:
            await self._run(self._ping_db.close, limiter=self._ping_limiter)

    async def maintain(self, every: float = CHECKPOINT_SECONDS) -> None:
        """Copy the WAL back into the database file every `every` seconds, on a connection
        and a thread of its own, so that no write waits for a checkpoint (and its fsync), as
        it would with sqlite's automatic ones, which run inside the commit that crosses the
        threshold. PASSIVE: it never blocks readers or writers.

        Resource handling: runs until cancelled; its connection is closed on the way out.
        """
        path = self._path
        db = await trio.to_thread.run_sync(
            lambda: sqlite3.connect(path, check_same_thread=False, isolation_level=None))
        try:
            while True:
                await trio.sleep(every)
                await trio.to_thread.run_sync(
                    lambda: db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(db.close)

    async def ping(self) -> None:
        """Read the file's header on a connection and a thread slot of the ping's own.

        A ping says whether the store answers, not how long this node's calls queue: behind
        the one connection's slot it would wait for every call queued before it, and a node
        busy with a reconnect storm would take its own backlog for a lost store, step aside
        and feed the storm (vpiska/store/health.py)."""
        def ping() -> None:
            if self._ping_db is None:
                self._ping_db = sqlite3.connect(self._path, check_same_thread=False,
                                                isolation_level=None)
            self._ping_db.execute("PRAGMA schema_version").fetchone()

        await self._run(ping, limiter=self._ping_limiter)

    # Users.

    async def add_user(self, user: User) -> None:
        def insert() -> None:
            try:
                self._db.execute(
                    "INSERT INTO users (id, name, phone_code, phone, image_id, password)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (user.id, user.name, user.phone_code, user.phone, user.image_id,
                     user.password_hash),
                )
            except sqlite3.IntegrityError:
                raise self._user_clash(user.id, user.name, user.phone) from None

        await self._run(insert)

    def _user_clash(self, user_id: str, name: str | None, phone: str | None) -> DomainError:
        """After a failed write, name every field that another user already holds."""
        name_taken = name is not None and self._db.execute(
            "SELECT 1 FROM users WHERE name = ? AND id != ?", (name, user_id)).fetchone()
        phone_taken = phone is not None and self._db.execute(
            "SELECT 1 FROM users WHERE phone = ? AND id != ?", (phone, user_id)).fetchone()
        return clash_error(bool(name_taken), bool(phone_taken))

    async def user_by_id(self, user_id: str) -> User | None:
        return await self._run(self._one_user, "id", user_id)

    async def user_by_phone(self, phone: str) -> User | None:
        return await self._run(self._one_user, "phone", phone)

    async def user_ids(self, limit: int) -> list[str]:
        def read() -> list[str]:
            rows = self._db.execute("SELECT id FROM users LIMIT ?", (limit,)).fetchall()
            return [str(row[0]) for row in rows]
        return await self._run(read)

    def _one_user(self, column: str, value: str) -> User | None:
        row = self._db.execute(
            f"SELECT id, name, phone, password, image_id, phone_code FROM users WHERE {column} = ?",
            (value,),
        ).fetchone()
        return User(*row) if row else None

    async def update_user(
        self, user_id: str, *, name: str | None, phone: str | None
    ) -> User | None:
        def update() -> User | None:
            try:
                self._db.execute(
                    "UPDATE users SET name = coalesce(?, name), phone = coalesce(?, phone)"
                    " WHERE id = ?",
                    (name, phone, user_id),
                )
            except sqlite3.IntegrityError:
                raise self._user_clash(user_id, name, phone) from None
            return self._one_user("id", user_id)

        return await self._run(update)

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        await self._execute("UPDATE users SET password = ? WHERE id = ?", password_hash, user_id)

    async def set_user_image(self, user_id: str, image_id: str) -> User | None:
        def swap() -> User | None:
            # IMMEDIATE: no other process on the file can set an image between read and write.
            with self._transaction("BEGIN IMMEDIATE"):
                before = self._one_user("id", user_id)
                if before is not None:
                    self._db.execute("UPDATE users SET image_id = ? WHERE id = ?",
                                     (image_id, user_id))
            return before

        return await self._run(swap)

    async def delete_user(self, user_id: str) -> User | None:
        def delete() -> User | None:
            with self._transaction("BEGIN IMMEDIATE"):
                user = self._one_user("id", user_id)
                self._db.execute("DELETE FROM users WHERE id = ?", (user_id,))
            return user

        return await self._run(delete)

    async def anonymise_chat(self, user_id: str) -> list[str]:
        """No index finds a user's lines: one on chat_messages(user_id) made every chat write
        about three times slower, for an account deletion now and then. So the lines are found
        by a scan on a connection of its own (a WAL read: no write and no other call of this
        store waits for it), then rewritten event by event along the primary key."""
        path = self._path

        def scan() -> list[str]:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            try:
                rows = db.execute(
                    "SELECT DISTINCT event_id FROM chat_messages WHERE user_id = ?", (user_id,))
                return [str(row[0]) for row in rows]
            finally:
                db.close()

        touched = await trio.to_thread.run_sync(scan)

        def anonymise() -> None:
            with self._transaction("BEGIN IMMEDIATE"):
                self._db.executemany(
                    "UPDATE chat_messages SET user_name = '', user_image_id = ''"
                    " WHERE event_id = ? AND user_id = ?",
                    [(event_id, user_id) for event_id in touched])

        await self._run(anonymise)
        return touched

    async def _execute(self, sql: str, *params: Any) -> int:
        return await self._run(lambda: self._db.execute(sql, params).rowcount)

    # Media.

    async def add_media(self, media: Media) -> None:
        await self._execute(
            "INSERT INTO media (id, name, content_type, size, last_modified_date)"
            " VALUES (?, ?, ?, ?, ?)",
            media.id, media.name, media.content_type, media.size, media.last_modified.isoformat(),
        )

    async def media(self, media_id: str) -> Media | None:
        def select() -> Media | None:
            row = self._db.execute(
                "SELECT id, name, content_type, size, last_modified_date FROM media WHERE id = ?",
                (media_id,),
            ).fetchone()
            if row is None:
                return None
            found_id, name, content_type, size, modified = row
            return Media(found_id, name, content_type, size, datetime.fromisoformat(modified))

        return await self._run(select)

    async def media_ids(self, after: str, limit: int) -> list[str]:
        def select() -> list[str]:
            rows = self._db.execute(
                "SELECT id FROM media WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
            return [str(row[0]) for row in rows]

        return await self._run(select)

    async def media_found(self, media_ids: Sequence[str]) -> set[str]:
        def select() -> set[str]:
            marks = ", ".join("?" * len(media_ids))
            rows = self._db.execute(f"SELECT id FROM media WHERE id IN ({marks})",
                                    list(media_ids))
            return {str(row[0]) for row in rows}

        return await self._run(select) if media_ids else set()

    async def delete_media(self, media_id: str) -> bool:
        def delete() -> bool:
            # IMMEDIATE takes the write lock before the check: no other connection to the file
            # can add a reference between the check and the delete.
            with self._transaction("BEGIN IMMEDIATE"):
                found = self._db.execute("SELECT 1 FROM media WHERE id = ?", (media_id,))
                if found.fetchone() is None:
                    return False
                if self._db.execute(_MEDIA_REFERENCES, (media_id, media_id)).fetchone():
                    raise DomainError(ErrorCode.MEDIA_IN_USE)
                self._db.execute("DELETE FROM media WHERE id = ?", (media_id,))
            return True

        return await self._run(delete)

    # Events.

    async def add_event(self, event: Event) -> None:
        def insert() -> None:
            try:
                with self._transaction():
                    self._db.execute(
                        "INSERT INTO events (id, owner_id, name, address, state, x, y, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (event.id, event.owner_id, event.name, event.address,
                         OPEN if event.is_open else CLOSED, event.coordinates.x,
                         event.coordinates.y, event.created_at.isoformat()),
                    )
                    self._db.executemany(
                        "INSERT INTO event_media (event_id, media_id, content_type)"
                        " VALUES (?, ?, ?)",
                        [(event.id, m.id, m.content_type) for m in event.media],
                    )
            except sqlite3.IntegrityError:
                raise DomainError(ErrorCode.OWNER_ALREADY_HAS_EVENT) from None

        await self._run(insert)

    _EVENT_COLUMNS = "id, owner_id, name, address, x, y, created_at, state"

    def _event_from_row(self, row: tuple[Any, ...]) -> Event:
        event_id, owner_id, name, address, x, y, created_at, state = row
        media = self._db.execute(
            "SELECT media_id, content_type FROM event_media WHERE event_id = ? ORDER BY rowid",
            (event_id,),
        ).fetchall()
        banned = self._db.execute(
            "SELECT user_id FROM event_bans WHERE event_id = ?", (event_id,)).fetchall()
        return Event(
            id=event_id, owner_id=owner_id, name=name, address=address,
            coordinates=Coordinates(x, y), created_at=datetime.fromisoformat(created_at),
            is_open=state == OPEN, media=tuple(EventMedia(*m) for m in media),
            banned=frozenset(str(row[0]) for row in banned),
        )

    async def event(self, event_id: str) -> Event | None:
        def select() -> Event | None:
            row = self._db.execute(
                f"SELECT {self._EVENT_COLUMNS} FROM events WHERE id = ?", (event_id,)
            ).fetchone()
            return self._event_from_row(row) if row else None

        return await self._run(select)

    async def open_event_of(self, owner_id: str) -> str | None:
        def select() -> str | None:
            row = self._db.execute(
                "SELECT id FROM events WHERE owner_id = ? AND state = ?", (owner_id, OPEN)
            ).fetchone()
            return row[0] if row else None

        return await self._run(select)

    async def open_events(self) -> list[Event]:
        def select() -> list[Event]:
            rows = self._db.execute(
                f"SELECT {self._EVENT_COLUMNS} FROM events WHERE state = ?"
                " ORDER BY created_at, rowid",
                (OPEN,),
            ).fetchall()
            return [self._event_from_row(row) for row in rows]

        return await self._run(select)

    async def claim_event(self, event_id: str, epoch: int, claimant: str) -> Event | None:
        def claim() -> Event | None:
            with self._transaction("BEGIN IMMEDIATE"):
                row = self._db.execute(
                    f"SELECT {self._EVENT_COLUMNS}, epoch, claimant FROM events WHERE id = ?",
                    (event_id,)
                ).fetchone()
                if row is None:
                    return None
                *fields, claimed, holder = row
                check_claim(event_id, epoch, claimant, claimed, holder or None)
                if epoch != claimed:
                    self._db.execute("UPDATE events SET epoch = ?, claimant = ? WHERE id = ?",
                                     (epoch, claimant, event_id))
                return self._event_from_row(tuple(fields))

        return await self._run(claim)

    def _check_epoch(self, event_id: str, epoch: int | None) -> None:
        """Inside a transaction: raise if a write by `epoch` may not change the event."""
        if epoch is None:
            return
        row = self._db.execute("SELECT epoch FROM events WHERE id = ?", (event_id,)).fetchone()
        if row is not None:  # an unknown event has no claim to respect
            check_epoch(event_id, epoch, row[0])

    def _fenced(self, event_id: str, epoch: int | None) -> AbstractContextManager[None]:
        """Around one write statement: as it always ran when unfenced; else one IMMEDIATE
        transaction holding the epoch check and the write."""
        if epoch is None:
            return nullcontext()
        return self._fenced_transaction(event_id, epoch)

    @contextmanager
    def _fenced_transaction(self, event_id: str, epoch: int) -> Iterator[None]:
        with self._transaction("BEGIN IMMEDIATE"):
            self._check_epoch(event_id, epoch)
            yield

    async def _execute_fenced(self, event_id: str, epoch: int | None, sql: str,
                              *params: Any) -> int:
        def execute() -> int:
            with self._fenced(event_id, epoch):
                return self._db.execute(sql, params).rowcount

        return await self._run(execute)

    async def update_event(
        self, event_id: str, address: str, coordinates: Coordinates, *, epoch: int | None = None
    ) -> None:
        await self._execute_fenced(
            event_id, epoch, "UPDATE events SET address = ?, x = ?, y = ? WHERE id = ?",
            address, coordinates.x, coordinates.y, event_id,
        )

    async def close_event(self, event_id: str, *, epoch: int | None = None) -> None:
        await self._execute_fenced(
            event_id, epoch, "UPDATE events SET state = ? WHERE id = ?", CLOSED, event_id)

    async def add_event_media(
        self, event_id: str, media: EventMedia, *, epoch: int | None = None
    ) -> None:
        await self._execute_fenced(
            event_id, epoch,
            "INSERT OR IGNORE INTO event_media (event_id, media_id, content_type) VALUES (?, ?, ?)",
            event_id, media.id, media.content_type,
        )

    async def remove_event_media(
        self, event_id: str, media_id: str, *, epoch: int | None = None
    ) -> bool:
        return await self._execute_fenced(
            event_id, epoch,
            "DELETE FROM event_media WHERE event_id = ? AND media_id = ?", event_id, media_id,
        ) > 0

    async def ban_member(self, event_id: str, user_id: str, *, epoch: int | None = None) -> None:
        def ban() -> None:
            with self._fenced(event_id, epoch):
                # Only for an event that exists: a ban lives and ends with its event.
                self._db.execute(
                    "INSERT OR IGNORE INTO event_bans (event_id, user_id)"
                    " SELECT id, ? FROM events WHERE id = ?", (user_id, event_id))

        await self._run(ban)

    # Chat.

    async def append_chat(
        self, event_id: str, first_seq: int, messages: Sequence[ChatMessage], *,
        epoch: int | None = None,
    ) -> None:
        def insert() -> None:
            values = _chat_values(event_id, first_seq, messages)
            # One transaction per batch (autocommit mode would commit every row): this is
            # what makes group commit pay. A fenced one takes the write lock before its check.
            with self._transaction("BEGIN" if epoch is None else "BEGIN IMMEDIATE"):
                self._check_epoch(event_id, epoch)
                written = 0
                for rows in _chunks(len(messages)):
                    self._db.execute(_INSERT_CHAT[rows], values[written * _CHAT_COLUMNS:
                                                                (written + rows) * _CHAT_COLUMNS])
                    written += rows

        await self._run(insert)

    async def chat(self, event_id: str, start: int = 0) -> list[ChatMessage]:
        return await self.chat_slice(event_id, start, _NO_END)

    async def chat_slice(self, event_id: str, start: int, stop: int) -> list[ChatMessage]:
        def select() -> list[ChatMessage]:
            rows = self._db.execute(
                "SELECT user_id, user_name, user_image_id, message, sent_at, client_id"
                " FROM chat_messages WHERE event_id = ? AND seq >= ? AND seq < ? ORDER BY seq",
                (event_id, start, min(stop, _NO_END)),
            ).fetchall()
            return [ChatMessage(user_id, name, image_id, message, _moment(sent_at), client_id)
                    for user_id, name, image_id, message, sent_at, client_id in rows]

        return await self._run(select)

    async def chat_client_ids(self, event_id: str, start: int = 0) -> dict[tuple[str, str], int]:
        def select() -> dict[tuple[str, str], int]:
            rows = self._db.execute(
                "SELECT user_id, client_id, seq FROM chat_messages"
                " WHERE event_id = ? AND seq >= ? AND client_id IS NOT NULL",
                (event_id, start)).fetchall()
            return {(user_id, client_id): seq for user_id, client_id, seq in rows}

        return await self._run(select)

    async def erase_chat(self, event_id: str, seq: int, *, epoch: int | None = None) -> bool:
        return await self._execute_fenced(
            event_id, epoch, "UPDATE chat_messages SET message = '' WHERE event_id = ? AND seq = ?",
            event_id, seq) > 0

    async def chat_length(self, event_id: str) -> int:
        def count() -> int:
            row = self._db.execute(
                "SELECT max(seq) FROM chat_messages WHERE event_id = ?", (event_id,)
            ).fetchone()
            return 0 if row[0] is None else row[0] + 1

        return await self._run(count)


# A chat batch goes in as multi-row INSERTs of these many rows: one statement step for up to 128
# lines, where executemany steps once per line (a quarter less of the store thread's time for 100
# lines). Powers of two, so a batch of any length is a few of them, and sqlite3's statement cache
# keeps all eight prepared.
_CHUNK_ROWS = (128, 64, 32, 16, 8, 4, 2, 1)
_CHAT_COLUMNS = 8
_INSERT_CHAT = {
    rows: "INSERT INTO chat_messages (event_id, seq, user_id, user_name, user_image_id, message,"
          " sent_at, client_id) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    for rows in _CHUNK_ROWS
}


def _chunks(lines: int) -> Iterator[int]:
    """The sizes of the INSERTs that write `lines` rows, largest first."""
    for rows in _CHUNK_ROWS:
        while lines >= rows:
            yield rows
            lines -= rows


def _chat_values(event_id: str, first_seq: int, messages: Sequence[ChatMessage]) -> list[Any]:
    """The rows of `messages` as one flat list of _CHAT_COLUMNS values each. A batch's lines
    share one moment, converted once."""
    values: list[Any] = []
    moment: datetime | None = None
    millis = None
    for seq, m in enumerate(messages, start=first_seq):
        if m.sent_at is not moment:
            moment, millis = m.sent_at, _millis(m.sent_at)
        values += (event_id, seq, m.user_id, m.user_name, m.user_image_id, m.message, millis,
                   m.client_id)
    return values


# sqlite's integers are 64-bit: a seq bound beyond every line.
_NO_END = 2**63 - 1


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _millis(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - _EPOCH) // timedelta(milliseconds=1)


def _moment(millis: int | None) -> datetime | None:
    return None if millis is None else _EPOCH + timedelta(milliseconds=millis)
