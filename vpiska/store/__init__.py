"""Persistence: the Store interface, its sqlite, MongoDB and in-memory implementations, and media
files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from vpiska.config import Config
from vpiska.store.base import EpochTaken, StaleEpoch, Store
from vpiska.store.files import MediaFiles
from vpiska.store.memory import MemoryStore

__all__ = ["EpochTaken", "MediaFiles", "MemoryStore", "StaleEpoch", "Store", "open_store"]


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
