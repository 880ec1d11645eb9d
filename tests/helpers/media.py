"""Where media bytes live (files or GridFS) and what is stored there, read past the server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.helpers.mongodb_fixtures import MongoDatabase
from tests.helpers.server import Server
from vpiska.store import MediaBytes, MediaFiles, media_bytes
from vpiska.store.gridfs import GridFSMedia
from vpiska.store.mongo import MongoStore


def bytes_of(server: Server) -> MediaBytes:
    """The home of the server's media bytes, as the server opened it."""
    return media_bytes(server.config, server.store)


@asynccontextmanager
async def a_home_of_bytes(kind: str, tmp_path: Path,
                          request: pytest.FixtureRequest) -> AsyncIterator[MediaBytes]:
    if kind == "files":
        yield MediaFiles(tmp_path / "media")
        return
    database: MongoDatabase = request.getfixturevalue("mongodb_database")
    store = await MongoStore.open(database.url, database.name)
    try:
        yield GridFSMedia(store.database)
    finally:
        await store.aclose()


def stored_ids(home: MediaBytes) -> list[str]:
    """Every id with bytes or a piece of them (a file, a GridFS file or chunk)."""
    if isinstance(home, MediaFiles):
        return [path.name for path in home.root.iterdir()]
    assert isinstance(home, GridFSMedia)
    return sorted({*home.database["fs.files"].distinct("_id"),
                   *home.database["fs.chunks"].distinct("files_id")})
