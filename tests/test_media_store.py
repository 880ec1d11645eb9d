"""Where media bytes live (MEDIA_STORE), what many large transfers cost a node's memory, and
`python -m vpiska media import` on a folder in the older Go backend's layout, killed halfway.

Both homes of bytes run each test: sqlite with files, MongoDB with GridFS.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest
import trio

from tests.helpers.cluster_fixtures import StartCluster
from tests.helpers.mongodb_fixtures import MongoDatabase
from vpiska.config import Config, ConfigError
from vpiska.domain import Media, new_id, utc_now
from vpiska.store import MediaBytes, Store, media_bytes, open_store
from vpiska.store.gridfs import GridFSMedia

WAIT_SECONDS = 60

# --- MEDIA_STORE ------------------------------------------------------------------------------


def test_media_go_to_gridfs_beside_mongodb_and_to_files_beside_sqlite() -> None:
    assert Config.from_env({}).media_store == "files"
    assert Config.from_env({"DB_CONNECTION": "mongodb://db:27017"}).media_store == "gridfs"
    assert Config.from_env({"DB_CONNECTION": "mongodb://db:27017",
                            "MEDIA_STORE": "files"}).media_store == "files"
    assert Config.from_env({"DB_CONNECTION": "mongodb+srv://db",
                            "MEDIA_STORE": "GridFS"}).media_store == "gridfs"


@pytest.mark.parametrize("value", ["gridfs", "s3"])
def test_a_media_store_that_cannot_work_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_env({"MEDIA_STORE": value})
    assert raised.value.variable == "MEDIA_STORE"


# --- A node's settings on each home of bytes --------------------------------------------------


@pytest.fixture(params=["files", "gridfs"])
def media_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The variables of one home of media bytes: sqlite and files (DATA_DIR's defaults), or
    MongoDB and GridFS (MEDIA_STORE's default beside MongoDB)."""
    if request.param == "files":
        return {}
    database: MongoDatabase = request.getfixturevalue("mongodb_database")
    return {"DB_CONNECTION": database.url, "DB_NAME": database.name}


@asynccontextmanager
async def opened(config: Config) -> AsyncIterator[tuple[Store, MediaBytes]]:
    """The store and the media bytes `config` names, as a node opens them."""
    async with open_store(config) as store:
        yield store, media_bytes(config, store)


async def read_all(home: MediaBytes, media_id: str) -> bytes | None:
    stored = await home.open(media_id)
    if stored is None:
        return None
    return b"".join([chunk async for chunk in stored.chunks()])


# --- Memory under many large transfers --------------------------------------------------------

MIB = 2**20
TRANSFERS = 20
UPLOAD_BYTES = 20 * MIB
RSS_GROWTH_LIMIT = 64 * MIB
BLOCK = bytes(range(256)) * 256  # 64 KiB; an upload is this block over and over
BOUNDARY = "rss-test-boundary"


def memory_of(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak since the last reset), in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(value.split()[0]) * 1024
    return values


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)


async def multipart_body(size: int) -> AsyncIterator[bytes]:
    """A multipart body of one `size`-byte file, made as it is sent (chunked, no length)."""
    yield (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"'
           f"\r\nContent-Type: video/mp4\r\n\r\n").encode()
    for _ in range(size // len(BLOCK)):
        yield BLOCK
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def expected_digest(size: int) -> str:
    digest = hashlib.sha256()
    for _ in range(size // len(BLOCK)):
        digest.update(BLOCK)
    return digest.hexdigest()


async def upload_big(http: httpx.AsyncClient, size: int) -> str:
    response = await http.post(
        "/api/v1/media", content=multipart_body(size),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    envelope = response.json()
    assert envelope["isSuccess"] is True, envelope
    media_id: str = envelope["result"]
    return media_id


async def download_digest(http: httpx.AsyncClient, media_id: str, size: int) -> str:
    digest = hashlib.sha256()
    async with http.stream("GET", f"/api/v1/media/{media_id}") as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(size)
        async for chunk in response.aiter_raw():
            digest.update(chunk)
    return digest.hexdigest()


async def test_media_files_left_under_media_path_beside_gridfs_are_named_at_start(
    cluster: StartCluster, mongodb_database: MongoDatabase, tmp_path: Path
) -> None:
    """A MongoDB deployment that kept its media as files, started on a vpiska whose default
    beside MongoDB is GridFS, would answer 404 for every photo it has without a word: it says
    at start how to copy them over."""
    media_path = tmp_path / "old-media"
    media_path.mkdir()
    (media_path / "3fa85f64-5717-4562-b3fc-2c963f66afa6").write_bytes(b"a photo")
    group = await cluster(1, redis=None, DB_CONNECTION=mongodb_database.url,
                          DB_NAME=mongodb_database.name, MEDIA_PATH=str(media_path))
    [node] = group.nodes
    [line] = [line for line in node.lines() if "MEDIA_PATH" in line.get("event", "")]
    assert line["level"] == "warning"
    assert f"python -m vpiska media import {media_path}" in line["event"]


async def test_twenty_parallel_20_mib_uploads_and_downloads_grow_rss_by_less_than_64_mib(
    cluster: StartCluster, media_env: dict[str, str]
) -> None:
    """Measured on a node process of its own: its peak RSS while the transfers run, above its
    RSS once warmed up (one small upload and download: code imported, pools opened). Twenty
    uploads at once; then their twenty downloads at once, while twenty more uploads run."""
    group = await cluster(1, redis=None, MAX_UPLOAD_BYTES=str(UPLOAD_BYTES + MIB), **media_env)
    [node] = group.nodes
    async with httpx.AsyncClient(base_url=node.url, timeout=WAIT_SECONDS,
                                 limits=httpx.Limits(max_connections=2 * TRANSFERS)) as http:
        warm = await upload_big(http, len(BLOCK))
        assert await download_digest(http, warm, len(BLOCK)) == expected_digest(len(BLOCK))
        reset_peak(node.pid)
        before = memory_of(node.pid)["VmRSS"]
        ids: list[str] = []
        more_ids: list[str] = []
        digests: list[str] = []
        with trio.fail_after(10 * WAIT_SECONDS):
            async with trio.open_nursery() as nursery:
                for _ in range(TRANSFERS):
                    nursery.start_soon(collect, ids, upload_big, http, UPLOAD_BYTES)
            async with trio.open_nursery() as nursery:
                for media_id in ids:
                    nursery.start_soon(collect, digests, download_digest, http, media_id,
                                       UPLOAD_BYTES)
                    nursery.start_soon(collect, more_ids, upload_big, http, UPLOAD_BYTES)
        peak = memory_of(node.pid)["VmHWM"]
    assert digests == [expected_digest(UPLOAD_BYTES)] * TRANSFERS
    assert len(set(ids + more_ids)) == 2 * TRANSFERS
    growth = peak - before
    print(f"RSS {before / MIB:.1f} MiB before, peak {peak / MIB:.1f} MiB: +{growth / MIB:.1f} "
          f"MiB for {TRANSFERS} x {UPLOAD_BYTES // MIB} MiB up, then as many down and up")
    assert growth < RSS_GROWTH_LIMIT


async def collect(into: list[str], call: Callable[..., Awaitable[str]], *args: Any) -> None:
    into.append(await call(*args))


# --- Importing the older backend's media folder -----------------------------------------------


async def read_pty(master: int) -> bytes:
    """Everything written to the terminal whose other end `master` is, once its last writer
    has closed it (Linux then answers EIO)."""

    def read() -> bytes:
        output = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return output
            if not data:
                return output
            output += data

    return await trio.to_thread.run_sync(read)


async def run_import(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(WAIT_SECONDS):
        return await trio.run_process(
            [sys.executable, "-m", "vpiska", "media", "import", str(folder)], env=env,
            capture_stdout=True, capture_stderr=True, check=False)


def summary_of(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().splitlines()[-1]


def open_for_writing(path: Path) -> BinaryIO:
    """`path` opened to write, unbuffered, for the caller to close; a FIFO's open waits for
    its reader."""
    return open(path, "wb", buffering=0)


def torn_copy_left(config: Config, home: MediaBytes, media_id: str) -> bool:
    """Whether a copy of `media_id` was cut short: a partial file, or GridFS chunks without
    their file document."""
    if isinstance(home, GridFSMedia):
        return (home.database["fs.chunks"].count_documents({"files_id": media_id}) > 0
                and home.database["fs.files"].count_documents({"_id": media_id}) == 0)
    return (config.media_path / f".{media_id}.partial").exists()


async def test_import_copies_an_older_media_folder_and_resumes_after_a_kill(
    tmp_path: Path, media_env: dict[str, str]
) -> None:
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), **media_env}
    env.pop("MEDIA_STORE", None)
    env.pop("MEDIA_PATH", None)
    config = Config.from_env(env)
    folder = tmp_path / "go" / "media"  # the older backend's media/: files named by media id
    folder.mkdir(parents=True)
    # In id order, as the import walks them: two copied before the kill (one empty), the one
    # the kill cuts short, one copied after, one whose file is gone; and a file without record.
    first, empty, cut, after, gone = sorted(new_id() for _ in range(5))
    contents = {first: os.urandom(300_000), empty: b"", cut: os.urandom(3 * MIB),
                after: os.urandom(600_000)}
    async with opened(config) as (store, _):
        for media_id in (first, empty, cut, after, gone):
            size = len(contents.get(media_id, b"x"))
            if media_id == after:
                size += 1  # the older backend wrote records first: a crash left short files
            await store.add_media(Media(media_id, "old.jpg", "image/jpeg", size, utc_now()))
    for media_id, data in contents.items():
        if media_id != cut:
            (folder / media_id).write_bytes(data)
    (folder / new_id()).write_bytes(b"no record names me")
    os.mkfifo(folder / cut)  # the first run blocks reading it: killed while copying it

    master, terminal = pty.openpty()
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "vpiska", "media", "import", str(folder)], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal)
        os.close(terminal)
        terminal = -1
        with trio.fail_after(WAIT_SECONDS):
            writer = await trio.to_thread.run_sync(open_for_writing, folder / cut,
                                                   abandon_on_cancel=True)
            try:  # two thirds of the file, so a part of it is stored when the kill comes
                await trio.to_thread.run_sync(writer.write, contents[cut][: 2 * MIB],
                                              abandon_on_cancel=True)
                process.kill()
                await process.wait()
            finally:
                with contextlib.suppress(BrokenPipeError):
                    writer.close()
            counter = await read_pty(master)
    finally:
        os.close(master)
        if terminal != -1:
            os.close(terminal)
    assert process.returncode == -signal.SIGKILL
    assert b"\rmedia import: 1 records: copied 1, already there 0, missing on disk 0" in counter

    async with opened(config) as (store, home):
        assert await home.exists(first)
        assert await home.exists(empty)
        assert not await home.exists(cut)
        assert torn_copy_left(config, home, cut)
    (folder / cut).unlink()
    (folder / cut).write_bytes(contents[cut])

    resumed = await run_import(folder, env)
    assert summary_of(resumed) == (
        "media import: copied 2, already there 2, missing on disk 1 (records left without "
        "bytes), files without a record 1")
    assert b"\r" not in resumed.stderr  # no counter but on a terminal
    warnings = [json.loads(line) for line in resumed.stdout.decode().splitlines()[:-1]]
    assert [(line["level"], line["media_id"]) for line in warnings] == [("warning", after)]

    again = await run_import(folder, env)
    assert summary_of(again) == (
        "media import: copied 0, already there 4, missing on disk 1 (records left without "
        "bytes), files without a record 1")
    async with opened(config) as (store, home):
        for media_id, data in contents.items():
            assert await read_all(home, media_id) == data
        assert await read_all(home, gone) is None
        assert not torn_copy_left(config, home, cut)
