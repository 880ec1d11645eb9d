"""The README's curl walkthrough, run as written against a real `python -m vpiska`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import trio

from tests.helpers.process import vpiska_process

README = Path(__file__).parent.parent / "README.md"


def try_it_block() -> str:
    section = README.read_text().split("## Try it", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README's Try it section has no sh block"
    return block.group(1)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_readme_walkthrough_works(tmp_path: Path) -> None:
    (tmp_path / "avatar.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    async with vpiska_process(tmp_path) as served:
        script = try_it_block().replace("localhost:5000", f"127.0.0.1:{served.port}")
        result = await trio.run_process(
            ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path,
            capture_stdout=True, capture_stderr=True, check=False,
        )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert '"isSuccess":true' in out
    assert '"contentType":"image/png"' in out
