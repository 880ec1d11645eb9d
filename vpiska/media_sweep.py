"""The media sweep: bytes that no record names, left by a crash, are removed once old.

Media keeps its bytes and its record consistent by order (vpiska/media.py): bytes before the
record on upload, the record before the bytes on delete, so a crash never leaves a record
without bytes. What it can leave is the other way round: bytes whose record was never written
(a kill between an upload's two writes) or is already gone (a kill between a delete's), and
the pieces of a save that died halfway. Nothing serves those, so without this they would fill
the disk or the database for good.

A sweep runs at start-up and every SWEEP_INTERVAL_SECONDS. It walks the bytes' home a batch
at a time (MediaBytes.stored_before), asks the store which of a batch have a record (one
query), and removes the others, but only bytes older than ORPHAN_GRACE: an upload writes its
record right after its bytes, so young bytes without a record may be one under way. Each
sweep that removed anything says so in one line, with the counts. Every node of a cluster
sweeps the shared home; removing bytes twice is harmless.

A store that holds no media record at all while there are bytes is taken for a configuration
mistake (a wrong DB_NAME or DATA_DIR beside the real media), not for a library of orphans:
that sweep removes nothing and logs a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from datetime import datetime, timedelta
from typing import NoReturn

import trio

from vpiska.domain import utc_now
from vpiska.store import MediaBytes, Store

log = logging.getLogger(__name__)

# Far longer than an upload takes between its bytes and its record; and a day for an operator
# to notice a media store opened beside the wrong database before anything is removed.
ORPHAN_GRACE = timedelta(days=1)
SWEEP_INTERVAL_SECONDS = 6 * 3600


@dataclasses.dataclass
class SweepCounts:
    without_record: int = 0  # complete bytes no record names
    dead_saves: int = 0  # media whose save died halfway


async def sweep_orphans(store: Store, media_bytes: MediaBytes, *,
                        stored_before: datetime) -> SweepCounts:
    """Remove the bytes stored before `stored_before` that no record names, and what saves
    that died before it left.

    Error handling: a store or bytes error escapes; what was removed until then stays removed,
    and the next sweep goes on from the start."""
    counts = SweepCounts()
    any_record = bool(await store.media_ids("", 1))
    batches = media_bytes.stored_before(stored_before)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            if not any_record:
                log.warning("media sweep skipped: the media store holds bytes but the database "
                            "no media record at all (a wrong DB_NAME or DATA_DIR?)")
                return counts
            found = await store.media_found(batch)
            for media_id in batch:
                if media_id not in found:
                    await media_bytes.remove(media_id)
                    counts.without_record += 1
    counts.dead_saves = await media_bytes.remove_dead_saves(stored_before)
    return counts


async def serve_media_sweep(
    store: Store, media_bytes: MediaBytes, *, grace: timedelta = ORPHAN_GRACE,
    interval: float = SWEEP_INTERVAL_SECONDS,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Sweep now, then every `interval` seconds, until cancelled.

    Error handling: a sweep that fails (the store or the bytes unreachable) is logged in one
    line and tried again at the next interval; it never ends the server."""
    task_status.started()
    while True:
        try:
            counts = await sweep_orphans(store, media_bytes, stored_before=utc_now() - grace)
        except Exception as error:  # whatever it was, the next sweep tries again
            log.warning("media sweep failed: tried again later",
                        extra={"cause": repr(error), "in_seconds": interval})
        else:
            if counts.without_record or counts.dead_saves:
                log.info("media sweep removed bytes no record names",
                         extra=dataclasses.asdict(counts))
        await trio.sleep(interval)
