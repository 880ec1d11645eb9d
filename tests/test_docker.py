"""Dockerfile and docker-compose.yml, checked without a Docker engine (our machines have none):
the image's command, environment and health check run here as a plain process, and the compose
file is parsed (by docker compose or docker-compose when installed) and read for what vpiska
needs of it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

from tests.cluster_fixtures import (
    START_SECONDS,
    WAIT_SECONDS,
    OutputLines,
    RedisServer,
    redis_ping,
    redis_server_executable,
)
from tests.test_process import env, free_port, wait_until_serving
from vpiska.config import Config

ROOT = Path(__file__).parent.parent


def dockerfile() -> dict[str, Any]:
    """The Dockerfile's base image, final CMD, HEALTHCHECK command, user and ENV."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    image: dict[str, Any] = {"env": {}}
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "FROM":
            image["base"] = rest.strip()
        elif instruction == "CMD":
            image["cmd"] = json.loads(rest)
        elif instruction == "HEALTHCHECK":
            image["healthcheck"] = json.loads(rest.split(" CMD ", 1)[1])
        elif instruction == "USER":
            image["user"] = rest.strip()
        elif instruction == "ENV":
            image["env"].update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
    return image


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_image_is_slim_python_and_runs_as_a_user() -> None:
    image = dockerfile()
    assert image["base"].startswith("python:")
    assert image["base"].endswith("-slim")
    assert image["user"] not in ("", "root", "0")
    assert image["cmd"] == ["python", "-m", "vpiska"]


async def test_image_command_serves_and_passes_its_health_check(tmp_path: Path) -> None:
    """The CMD with the image's ENV, as the container would run it; /data becomes tmp_path
    and the port a free one. Then the HEALTHCHECK command, then STOPSIGNAL's clean exit."""
    image = dockerfile()
    port = free_port()
    settings = {
        name: value.replace("/data", str(tmp_path / "data")) for name, value in image["env"].items()
    } | {"SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port)}
    command = [sys.executable if part == "python" else part for part in image["cmd"]]
    process = await trio.lowlevel.open_process(
        command, env=env(tmp_path, **settings), stdout=subprocess.DEVNULL)
    try:
        await wait_until_serving(f"http://127.0.0.1:{port}")
        check = [sys.executable if part == "python" else part for part in image["healthcheck"]]
        health = await trio.run_process(check, env=env(tmp_path, **settings), check=False)
        assert health.returncode == 0
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await process.wait() == 0
    finally:
        process.kill()
    assert (tmp_path / "data" / "vpiska.db").exists()  # the store went where the volume is


def test_compose_runs_vpiska_on_mongodb_7_with_volumes() -> None:
    services = compose()["services"]
    assert services["mongodb"]["image"].split(":")[1].startswith("7")
    vpiska = services["vpiska"]
    assert vpiska["build"] == "."
    assert "mongodb" in vpiska["depends_on"]
    settings = dict(item.split("=", 1) for item in vpiska["environment"] if "=" in item)
    config = Config.from_env(settings)  # what the container's vpiska would read
    assert config.store.kind == "mongodb"
    assert config.store.target.startswith("mongodb://mongodb:")  # the service's host name
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in vpiska["volumes"]}
    assert mounts[str(config.media_path)] in compose()["volumes"]
    data = {volume.split(":")[1]: volume.split(":")[0]
            for volume in services["mongodb"]["volumes"]}
    assert data["/data/db"] in compose()["volumes"]


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_file_parses_with_docker_compose() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    result = subprocess.run([*command, "-f", str(ROOT / "docker-compose.yml"), "config"],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "JWT_KEY": "from-the-shell"})
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]["vpiska"]["environment"]
    assert resolved["JWT_KEY"] == "from-the-shell"  # secrets come from the operator's shell


def test_make_targets_drive_compose() -> None:
    quiet = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL")}
    result = subprocess.run(["make", "--no-print-directory", "-n", "infrastructure", "build",
                             "up", "down"], cwd=ROOT, capture_output=True, text=True,
                            check=True, env=quiet)
    assert result.stdout.splitlines() == [
        "docker compose up -d mongodb", "docker compose build vpiska",
        "docker compose up -d --build", "docker compose down"]


# --- `make cluster` --------------------------------------------------------------------------


def test_make_cluster_runs_the_local_cluster_script() -> None:
    quiet = {k: v for k, v in os.environ.items()
             if k not in ("MAKEFLAGS", "MAKELEVEL", "WORKERS", "REDIS_PORT")}
    cores = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    # -o: as if the venv were up to date (its recipe is `make run`'s, tested elsewhere).
    result = subprocess.run(["make", "--no-print-directory", "-n", "-o", ".venv/.installed",
                             "cluster"], cwd=ROOT, capture_output=True, text=True, check=True,
                            env=quiet)
    assert result.stdout.splitlines() == [
        f"WORKERS={cores} REDIS_PORT=6379 PY=.venv/bin/python deploy/local-cluster.sh"]
    script = (ROOT / "deploy" / "local-cluster.sh").read_text()
    assert "apt-get install -y -qq redis-server" in script
    assert ("redis-server --bind 127.0.0.1 --port \"$REDIS_PORT\" --save '' --appendonly no"
            in script)
    assert 'WORKERS=$WORKERS REDIS_URL=$REDIS_URL DATA_DIR=$DATA_DIR "$PY" -m vpiska' in script


async def test_make_cluster_starts_redis_and_stops_it_once_the_nodes_have_exited(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """`make cluster` as run in a terminal, on a Redis port of the test's own; then Ctrl-C,
    which the terminal sends to the whole foreground process group."""
    redis_server_executable()
    port = free_port()
    try:
        output = await run_make_cluster(tmp_path, nursery, port)
        assert any(line.startswith("cluster: Redis started at") for line in output.lines)
        assert not await redis_ping("127.0.0.1", port)
        stopped = next(i for i, line in enumerate(output.lines) if '"event": "stopped"' in line)
        assert output.lines.index("cluster: Redis stopped") > stopped  # the nodes drained first
    finally:
        # If the test failed half-way, that Redis may still run.
        await trio.run_process(["redis-cli", "-p", str(port), "shutdown", "nosave"],
                               capture_stdout=True, capture_stderr=True, check=False)


async def test_make_cluster_uses_a_redis_that_answers_already_and_leaves_it_running(
    tmp_path: Path, nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    output = await run_make_cluster(tmp_path, nursery, redis_server.port)
    assert any(line.startswith("cluster: using the Redis") for line in output.lines)
    assert "cluster: Redis stopped" not in output.lines
    assert await redis_server.ping()


async def run_make_cluster(tmp_path: Path, nursery: trio.Nursery, redis_port: int
                           ) -> OutputLines:
    """Run `make cluster` (one node, on SERVER_PORT=0) until it serves, check that its node
    answers and Redis too, press Ctrl-C, and return all it printed once it has exited."""
    settings = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL")}
    # The test's own Python and vpiska: a checkout without its .venv runs this test too.
    process = await trio.lowlevel.open_process(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "cluster",
         f"PY={sys.executable}", f"REDIS_PORT={redis_port}", "WORKERS=1"],
        cwd=ROOT, env=settings | {"SERVER_PORT": "0", "DATA_DIR": str(tmp_path / "data")},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)  # a process group of its own, as in a terminal
    assert process.stdout is not None
    output = OutputLines()
    nursery.start_soon(output.read, process.stdout)
    try:
        with trio.fail_after(START_SECONDS):
            await output.wait_for(
                lambda: output.ended or any('"event": "serving"' in x for x in output.lines))
        serving = [json.loads(x) for x in output.lines if '"event": "serving"' in x]
        assert serving, "\n".join(output.lines)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{serving[0]['binds'][0]}/healthz")).status_code == 200
        assert await redis_ping("127.0.0.1", redis_port)
        os.killpg(process.pid, signal.SIGINT)
        with trio.fail_after(WAIT_SECONDS):
            await process.wait()
            await output.wait_for(lambda: output.ended)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    records = [json.loads(x) for x in output.lines if x.startswith("{")]
    assert records[-1]["event"] == "stopped"  # the node shut down cleanly
    return output
