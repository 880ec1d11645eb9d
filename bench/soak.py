"""`make soak`: 10,000 members in 100 rooms of one vpiska, light chat, for SOAK_MINUTES (10).

vpiska runs on a copy of the soak store (100 open events, 10,000 users) pinned to core 0 with
the bench's relaxed limits and its default keep-alive (pings every WS_PING_SECONDS, which the
client answers); the C load generator (core 1) opens the members 50 handshakes at a time,
checks that each is in its room, then sends SOAK_RATE lines/s round-robin over the rooms (10
senders per room) and prints a sample every minute: the server's RSS and open descriptors,
the client's open sockets, drops, lines and deliveries. At the end every member's count is
checked against its room's lines.

Verdicts (the issue's): after warm-up (the first minute) RSS stays flat, last sample ≤ 1.05 ×
first; no member misses a line; no socket that was reading is dropped. The run's figures go
to bench/soak.json and to the soak section of BENCHMARKS.md (only that section is replaced).
Not part of `make test`.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from bench import client, report
from bench.seed import MEMBERS, make_seeds
from bench.servers import BENCH, REPO, running

RATE = float(os.environ.get("SOAK_RATE", "50"))  # lines/s over all rooms: 0.5 per room
SAMPLE_SECONDS = 60.0


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def soak(minutes: float) -> dict[str, Any]:
    seeds = make_seeds(BENCH / ".cache")
    client.use_members(seeds.member_ids)
    options = {"n": MEMBERS, "in_flight": 50, "rate": RATE, "seconds": minutes * 60,
               "sample": min(SAMPLE_SECONDS, minutes * 60), "connect_budget": 180.0,
               "settle_budget": 120.0, "senders": 10}
    result: dict[str, Any] = {"started": now(), "members": MEMBERS,
                              "rooms": len(seeds.soak_event_ids), "rate": RATE,
                              "minutes": minutes, "sample_s": options["sample"], "samples": []}
    with running("vpiska", seeds.soak_db) as server:
        for line in client.stream("soak", [server.port], seeds.soak_event_ids, [server.pid],
                                  options):
            phase = line.pop("phase")
            if phase == "sample":
                result["samples"].append(line)
                print(f"soak {line['t'] / 60:4.1f} min: RSS {line['server_rss'] / 2**20:.1f} "
                      f"MiB, {line['server_fds']} fds, {line['client_open']} open, "
                      f"{line['dropped']} dropped, {line['received']:,} deliveries", flush=True)
            else:
                result[phase] = line
                print(f"soak {phase}: {json.dumps(line)}", flush=True)
    result["ended"] = now()
    return result


def write_section(soak_result: dict[str, Any]) -> None:
    """Replace the soak section of BENCHMARKS.md (or add it at the end)."""
    path = REPO / "BENCHMARKS.md"
    section = "\n".join(report.soak_markdown(soak_result)[1:])  # without the leading blank
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin, end = text.find(report.SOAK_BEGIN), text.find(report.SOAK_END)
    if begin != -1 and end != -1:
        text = text[:begin] + section + text[end + len(report.SOAK_END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> int:
    minutes = float(os.environ.get("SOAK_MINUTES", "10"))
    result = soak(minutes)
    report.SOAK_FILE.write_text(json.dumps(result, indent=1) + "\n")
    write_section(result)
    print("\n".join(report.soak_markdown(result)[-6:-2]))
    end = result.get("end", {})
    ok = end.get("members_missing_lines") == 0 and end.get("dropped_reading") == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
