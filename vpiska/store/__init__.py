"""Persistence: the Store interface, its sqlite, MongoDB and in-memory implementations, and the
homes of media bytes (files, GridFS)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from vpiska.config import Config
from vpiska.store.base import EpochTaken, StaleEpoch, Store
from vpiska.store.files import MediaFiles
from vpiska.store.media_bytes import BytesLost, MediaBytes, StoredBytes
from vpiska.store.memory import MemoryStore

__all__ = ["BytesLost", "EpochTaken", "MediaBytes", "MediaFiles", "MemoryStore", "StaleEpoch",
           "Store", "StoredBytes", "media_bytes", "open_store"]


@asynccontextmanager
async def open_store(config: Config) -> AsyncIterator[Store]:
    """Open the store `config` selects; close it on exit.

    The kind "memory" is for test servers (`StoreLocation("memory", "")`): DB_CONNECTION never
    selects it, since its data ends with the process.
    """
    store: Store
    if config.store.kind == "mongodb":
        from vpiska.store.mongo import MongoStore

        store = await MongoStore.open(config.store.target, config.db_name)
    elif config.store.kind == "memory":
        store = MemoryStore()
    else:
        from vpiska.store.sqlite import SqliteStore

        store = await SqliteStore.open(config.store.target)
    try:
        yield store
    finally:
        await store.aclose()


def media_bytes(config: Config, store: Store) -> MediaBytes:
    """The home of media bytes MEDIA_STORE selects; GridFS is the database of `store`, which
    must then be the MongoDB store (Config.from_env refuses MEDIA_STORE=gridfs without it)."""
    if config.media_store == "gridfs":
        from vpiska.store.gridfs import GridFSMedia
        from vpiska.store.mongo import MongoStore

        if not isinstance(store, MongoStore):
            raise TypeError(f"MEDIA_STORE=gridfs needs the MongoDB store, not {store!r}")
        return GridFSMedia(store.database)
    return MediaFiles(config.media_path)
