"""schemathesis drives every operation of /swagger/doc.json against a real `python -m vpiska`.

Generated and malformed requests (its examples, coverage, fuzzing and stateful phases), every
answer checked against the document, plus: no status ≥ 500, every JSON answer an envelope
(tests/helpers/fuzz_checks.py), and a server log of JSON lines without an error or a traceback.
`make test` runs FUZZ_EXAMPLES examples per operation; `make fuzz` sets many more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.helpers.openapi import documented_operations
from tests.helpers.process import vpiska_process

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
FUZZ_SEED = os.environ.get("FUZZ_SEED")  # replay a reported run
HERE = Path(__file__).parent


async def test_fuzzing_every_operation_finds_no_fault(tmp_path: Path) -> None:
    async with vpiska_process(tmp_path, LOGGING_TRACE_REQUESTS="true") as server:
        try:
            token = await sign_up(server.url)
            run = await fuzz(server.url, token, tmp_path / "report.json")
        finally:
            server.process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                returncode = await server.exit_code()
    (tmp_path / "server.log").write_bytes(server.output)  # kept beside the report
    output = run.stdout.decode(errors="replace")
    report = json.loads((tmp_path / "report.json").read_text())
    records = read_log(server.output.decode())
    requests_sent = sum(1 for r in records if r["event"] == "http request"
                        and r["path"] != "/swagger/doc.json") - 1  # less our sign-up
    print(f"\nschemathesis: {report['operations']['tested']} operations, "
          f"{report['test_cases']['generated']} test cases, {requests_sent} requests, "
          f"failures {report['failures']}, seed {report['seed']}")

    assert run.returncode == 0, output[-8000:]
    assert report["operations"]["tested"] == documented_operations()
    assert report["errors"] == []
    faults = [r for r in records if r["level"] in ("error", "critical") or "traceback" in r]
    assert faults == []
    assert returncode == 0


async def sign_up(url: str) -> str:
    """A real user's token, so locked operations get past `unauthorized` to their checks."""
    async with httpx.AsyncClient(base_url=url) as client:
        answer = await client.post("/api/v1/users/create", json={
            "name": "fuzzer", "phone": "9000000001", "password": "secret1",
            "confirmPassword": "secret1"})
    return str(answer.json()["result"]["accessToken"])


async def fuzz(url: str, token: str, report: Path) -> subprocess.CompletedProcess[bytes]:
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file",
        str(HERE / "schemathesis.toml"), "run", f"{url}/swagger/doc.json",
        "--max-examples", str(FUZZ_EXAMPLES),
        "--header", f"Authorization: Bearer {token}",
        "--report", "json", "--report-json-path", str(report),
        "--no-color", "--workers", "2",
    ]
    if FUZZ_SEED:
        command += ["--seed", FUZZ_SEED]
    return await trio.run_process(  # in the report's folder: it keeps caches in its cwd
        command, capture_stdout=True, stderr=subprocess.STDOUT, check=False, cwd=report.parent,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HERE / "helpers" / "fuzz_checks.py")})


def read_log(text: str) -> list[dict[str, Any]]:
    """Every line the server wrote, each of which must be one JSON object, whatever a reader
    takes for a line break (fuzzed text puts U+2028 and the like in logged values)."""
    return [json.loads(line) for line in text.splitlines()]
