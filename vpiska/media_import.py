"""`python -m vpiska media import DIR`: copy an older deployment's media files into the media
store this configuration names (MEDIA_STORE: GridFS beside MongoDB, else files).

The older Go backend kept media records in the `media` collection, which vpiska reads as they
are, and the bytes in a folder of its own (`media/` in its working directory, `/app/media` in
its container): one file per media, named by the media id, no extension. vpiska serving that
database with GridFS finds the records but not the bytes (it answers 404 for them, with a
warning), until this command has copied them.

It walks the records, a page at a time in id order, and for each one whose bytes the media
store lacks copies the file DIR holds under its id. So it is:

- idempotent: a media whose bytes are stored is "already there" and left alone;
- resumable after a kill: each copy is all or nothing (MediaBytes.save), so a rerun skips what
  was copied and redoes the copy that was cut short.

At the end one summary line: media copied, already there, missing on disk (records whose file
DIR lacks: they stay without bytes), and files without a record (left where they are). On a
terminal a counter on stderr shows how far it got. A copied file whose size is not its record's
(the older backend wrote the record before the file, so a crash could leave a short file) is
copied as it is, with a warning naming it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import trio

from vpiska.config import Config
from vpiska.domain import is_id
from vpiska.store import MediaBytes, Store, media_bytes, open_store

log = logging.getLogger(__name__)

PAGE = 500  # records read at a time
# Least time between two redraws of the counter: a fast copy of many small files would spend
# more on the terminal than on the copies.
REDRAW_SECONDS = 0.1


@dataclasses.dataclass
class ImportCounts:
    copied: int = 0
    already_there: int = 0
    missing_on_disk: int = 0
    files_without_record: int = 0

    @property
    def records(self) -> int:
        return self.copied + self.already_there + self.missing_on_disk

    def summary(self) -> str:
        return (f"media import: copied {self.copied}, already there {self.already_there}, "
                f"missing on disk {self.missing_on_disk} (records left without bytes), "
                f"files without a record {self.files_without_record}")


async def import_media(
    source: Path, store: Store, home: MediaBytes, *,
    progress: Callable[[ImportCounts], None] = lambda counts: None,
) -> ImportCounts:
    """Copy the file in `source` of every media record of `store` whose bytes `home` lacks;
    `progress` is called after each record."""
    counts = ImportCounts()
    after = ""
    while page := await store.media_ids(after, PAGE):
        for media_id in page:
            await _import_one(source, media_id, store, home, counts)
            progress(counts)
        after = page[-1]
    counts.files_without_record = await _files_without_record(source, store)
    return counts


async def _import_one(source: Path, media_id: str, store: Store, home: MediaBytes,
                      counts: ImportCounts) -> None:
    if await home.exists(media_id):
        counts.already_there += 1
        return
    try:
        if not is_id(media_id):  # a name that could point outside `source`
            raise FileNotFoundError(media_id)
        file = await trio.to_thread.run_sync(open, source / media_id, "rb")
    except FileNotFoundError:
        counts.missing_on_disk += 1
        return
    with file:
        size = await home.save(media_id, file)
    counts.copied += 1
    record = await store.media(media_id)
    if record is not None and record.size != size:
        log.warning("copied a file whose size is not its record's (cut short by a crash of "
                    "the older backend?)",
                    extra={"media_id": media_id, "record_size": record.size, "file_size": size})


async def _files_without_record(source: Path, store: Store) -> int:
    def names() -> list[str]:
        with os.scandir(source) as entries:
            return [entry.name for entry in entries
                    if entry.is_file() and not entry.name.startswith(".")]

    count = 0
    for name in await trio.to_thread.run_sync(names):
        if not is_id(name) or await store.media(name) is None:
            count += 1
    return count


class Counter:
    """A one-line counter redrawn in place (`\\r`), at most every REDRAW_SECONDS."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._drawn_at = -REDRAW_SECONDS

    def __call__(self, counts: ImportCounts) -> None:
        now = trio.current_time()
        if now - self._drawn_at < REDRAW_SECONDS:
            return
        self._drawn_at = now
        self._draw(counts)

    def _draw(self, counts: ImportCounts) -> None:
        self._stream.write(f"\rmedia import: {counts.records} records: copied {counts.copied}, "
                           f"already there {counts.already_there}, "
                           f"missing on disk {counts.missing_on_disk}")
        self._stream.flush()

    def finish(self, counts: ImportCounts) -> None:
        self._draw(counts)
        self._stream.write("\n")
        self._stream.flush()


async def run(config: Config, source: Path) -> int:
    """The command: exit code 0 once every record was looked at, 2 if `source` is no folder."""
    if not await trio.to_thread.run_sync(source.is_dir):
        print(f"vpiska: media import: {source} is not a folder", file=sys.stderr)
        return 2
    counter = Counter(sys.stderr) if sys.stderr.isatty() else None
    async with open_store(config) as store:
        counts = await import_media(source, store, media_bytes(config, store),
                                    progress=counter or (lambda counts: None))
    if counter is not None:
        counter.finish(counts)
    print(counts.summary(), flush=True)
    return 0
