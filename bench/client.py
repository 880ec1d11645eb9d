"""The load generator, driven from Python: bench/loadgen_c/loadgen.c, built here, run pinned.

The client is C (one epoll loop, one thread) so that it out-delivers every server it measures
on one core; see the comment at the top of loadgen.c for its modes. This module compiles it
with the machine's `gcc -O2` into bench/.cache (named by a hash of the source, so an edit
rebuilds it; the binary is never committed), forges the members' tokens into a file it reads,
and runs it pinned to the client core with `taskset`. Its result is one JSON object on stdout
(soak mode: one per line).
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.tokens import forge_token

BENCH = Path(__file__).resolve().parent
SOURCE = BENCH / "loadgen_c" / "loadgen.c"
CACHE = BENCH / ".cache"
CLIENT_CORE = "1"


@functools.cache
def binary() -> Path:
    """The compiled client for the current source (built once per source version)."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    target = CACHE / f"loadgen-{digest}"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            raise RuntimeError("the load generator needs gcc (Debian: apt-get install gcc)")
        partial = target.with_suffix(".tmp")
        subprocess.run([gcc, "-O2", "-Wall", "-o", str(partial), str(SOURCE)], check=True)
        partial.rename(target)
    return target


_tokens: Path | None = None


def use_members(member_ids: Sequence[str]) -> None:
    """Forge one token per seeded member (valid for a day), one a line, for the client."""
    global _tokens
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "tokens.txt"
    path.write_text("".join(forge_token(user_id, f"member-{i}") + "\n"
                            for i, user_id in enumerate(member_ids)))
    _tokens = path


def tokens_file() -> Path:
    if _tokens is None:
        raise RuntimeError("client.use_members(seeds.member_ids) first")
    return _tokens


def command(mode: str, ports: Iterable[int], event_ids: Iterable[str],
            server_pids: Iterable[int], options: dict[str, Any]) -> list[str]:
    argv = ["taskset", "-c", CLIENT_CORE, str(binary()), mode,
            "--ports", ",".join(map(str, ports)), "--event-ids", ",".join(event_ids),
            "--server-pids", ",".join(map(str, server_pids)), "--tokens", str(tokens_file())]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", f"{value:.3f}" if isinstance(value, float)
                 else str(value)]
    return argv


def run(mode: str, ports: Iterable[int], event_ids: Iterable[str], server_pids: Iterable[int],
        options: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement; its JSON result (RuntimeError if the client failed)."""
    done = subprocess.run(command(mode, ports, event_ids, server_pids, options),
                          capture_output=True, text=True, timeout=timeout)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen {mode} exited {done.returncode}: {done.stderr[-1500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def stream(mode: str, ports: Iterable[int], event_ids: Iterable[str],
           server_pids: Iterable[int], options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Run a long measurement (soak), yielding each JSON line as the client prints it."""
    with subprocess.Popen(command(mode, ports, event_ids, server_pids, options),
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                yield json.loads(line)
        if proc.wait() != 0:
            raise RuntimeError(f"loadgen {mode} exited {proc.returncode}")
