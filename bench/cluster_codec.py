"""The cost of the cluster's hot message: encode and decode one 100-frame `Frames` (what an
owner publishes per event and every gateway of the event reads), with this tree's codec and,
with `--against REV`, with vpiska/cluster/protocol.py as it was at REV, measured in turns.

    python -m bench.cluster_codec --against 18fb078

The message: chat lines as the actor frames them, one in ten for v2 sockets only and one in ten
for one socket alone (an ack), so all three layouts of a frame are in it. Both codecs must
write the same bytes (checked). Best of `--rounds` × 5 repeats of `--number` calls each.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from types import ModuleType
from typing import Any

from vpiska.cluster import protocol

LINE = json.dumps({"userId": "6b1d3a1e-8a43-4b7e-9a53-2f3c1b0e9d11", "name": "Лёша",
                   "imageId": "", "message": "see you at the party tonight!", "seq": 1},
                  ensure_ascii=False)


def frames_message(codec: Any) -> Any:
    frames = []
    for i in range(100):
        if i % 10 == 9:
            frames.append(codec.Shown(i, "chatMessage/" + LINE, 2))
        elif i % 10 == 8:
            frames.append(codec.Shown(None, 'ack/{"id":"c-1","seq":1}', 2, "node-b-17"))
        else:
            frames.append(codec.Shown(i, "chatMessage/" + LINE))
    return codec.Frames("node-a", 3, 1000, frames)


def codec_at(revision: str) -> ModuleType:
    source = subprocess.run(["git", "show", f"{revision}:vpiska/cluster/protocol.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "protocol_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("protocol_then", path)
    assert spec is not None
    assert spec.loader is not None
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # for dataclasses
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="a revision whose codec to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    codecs: dict[str, Any] = {"this tree": protocol}
    if args.against:
        codecs = {f"at {args.against}": codec_at(args.against), **codecs}
    written = {name: codec.encode(frames_message(codec)) for name, codec in codecs.items()}
    if len(set(written.values())) != 1:
        sys.exit("the codecs write different bytes")
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):  # in turns, so that a busy machine slows both alike
        for name, codec in codecs.items():
            message = frames_message(codec)
            data = codec.encode(message)
            assert codec.decode(data) == message
            for what, call in (("encode", lambda c=codec, m=message: c.encode(m)),
                               ("decode", lambda c=codec, d=data: c.decode(d))):
                seconds = min(timeit.repeat(call, number=args.number, repeat=5)) / args.number
                best[name, what] = min(best.get((name, what), seconds), seconds)
    size = len(next(iter(written.values())))
    print(f"one Frames message of 100 frames, {size} bytes (µs per message)")
    print(f"{'codec':12s} {'encode':>8s} {'decode':>8s} {'both':>8s}")
    for name in codecs:
        encode, decode = best[name, "encode"] * 1e6, best[name, "decode"] * 1e6
        print(f"{name:12s} {encode:8.1f} {decode:8.1f} {encode + decode:8.1f}")


if __name__ == "__main__":
    main()
