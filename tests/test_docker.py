"""Dockerfile and docker-compose.yml, checked without a Docker engine (our machines have none):
the image's command, environment and health check run here as a plain process, and the compose
file is parsed (by docker compose or docker-compose when installed) and read for what vpiska
needs of it. The cluster's set-ups run here for real where they can: `make cluster` on a Redis of
the test's own, and deploy/nginx.conf on this machine's nginx (when installed) in front of three
node processes."""

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

from tests.helpers.clients import Crowd, token_for
from tests.helpers.cluster_fixtures import (
    START_SECONDS,
    WAIT_SECONDS,
    OutputLines,
    RedisServer,
    StartCluster,
    redis_ping,
    redis_server_executable,
)
from tests.helpers.process import env, free_port, vpiska_process
from tests.helpers.server import Server
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
    and the port one the kernel picks. Then the HEALTHCHECK command, then STOPSIGNAL's clean
    exit."""
    image = dockerfile()
    settings = {
        name: value.replace("/data", str(tmp_path / "data")) for name, value in image["env"].items()
    } | {"SERVER_HOST": "127.0.0.1", "SERVER_PORT": "0"}
    command = [sys.executable if part == "python" else part for part in image["cmd"]]
    async with vpiska_process(tmp_path, command, **settings) as served:
        check = [sys.executable if part == "python" else part for part in image["healthcheck"]]
        health = await trio.run_process(
            check, env=env(tmp_path, **settings | {"SERVER_PORT": str(served.port)}), check=False)
        assert health.returncode == 0
        served.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await served.exit_code() == 0
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


# --- `make cluster` -------------------------------------------------------------------------------


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


# --- The compose profile `cluster` and deploy/nginx.conf ------------------------------------------

CLUSTER_SERVICES = {"redis", "node-1", "node-2", "node-3", "lb"}


def compose_config(*options: str) -> dict[str, Any]:
    """`docker compose [options] config`, resolved, with JWT_KEY set in the shell."""
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    result = subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), *options, "config"],
        capture_output=True, text=True, check=False, env={**os.environ, "JWT_KEY": "from-shell"})
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def settings_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment` as written in the file (a list of NAME=value and NAME)."""
    return dict(item.split("=", 1) for item in service["environment"] if "=" in item)


def test_cluster_profile_parses_and_leaves_the_default_services_alone() -> None:
    resolved = compose_config("--profile", "cluster")["services"]
    assert set(resolved) == {"mongodb", "vpiska"} | CLUSTER_SERVICES
    for name in CLUSTER_SERVICES:
        assert resolved[name]["profiles"] == ["cluster"], name
    assert all("profiles" not in resolved[name] for name in ("mongodb", "vpiska"))
    for name in ("node-1", "node-2", "node-3"):
        assert resolved[name]["environment"]["JWT_KEY"] == "from-shell"  # one key for all
        assert resolved[name]["environment"]["MEDIA_STORE"] == "gridfs"
        assert not resolved[name].get("volumes"), resolved[name]["volumes"]  # no disk shared
    # The default services are those of before, whatever profile is active.
    assert compose_config()["services"]["vpiska"] == resolved["vpiska"]
    assert compose_config()["services"]["mongodb"] == resolved["mongodb"]


def test_cluster_nodes_share_one_redis_one_mongodb_and_no_volume() -> None:
    """As nodes on different hosts: media bytes in MongoDB, nothing on a disk in common."""
    services = compose()["services"]
    nodes = {name: service for name, service in services.items() if name.startswith("node-")}
    assert sorted(nodes) == ["node-1", "node-2", "node-3"]
    assert len({json.dumps(node, sort_keys=True) for node in nodes.values()}) == 1  # identical
    node = nodes["node-1"]
    assert node["build"] == "."
    assert node["image"] == services["vpiska"]["image"]  # the same image as the plain service
    assert {"mongodb", "redis"} <= set(node["depends_on"])
    settings = settings_of(node)
    assert settings["REDIS_URL"] == "redis://redis:6379"  # the redis service, its default port
    config = Config.from_env(settings)
    assert config.store.kind == "mongodb"
    assert config.store.target == settings_of(services["vpiska"])["DB_CONNECTION"]
    assert "JWT_KEY" in node["environment"]  # passed on from the shell
    assert settings.get("MEDIA_STORE", "gridfs") == "gridfs"  # GridFS is MongoDB's default
    assert "MEDIA_PATH" not in settings
    assert "volumes" not in node  # /data is the image's anonymous volume: each node's own
    mounted = [volume.split(":")[0] for name in (*nodes, "redis", "lb")
               for volume in services[name].get("volumes", [])]
    assert mounted == ["./deploy/nginx.conf"]  # the balancer's file, read-only, and nothing else

    redis = services["redis"]
    assert redis["image"].split(":")[1].startswith("7")
    command = redis["command"]
    assert command[command.index("--save") + 1] == ""  # no snapshots
    assert command[command.index("--appendonly") + 1] == "no"
    assert "volumes" not in redis  # nothing kept
    assert "ports" not in redis  # nor published: only the nodes reach it

    lb = services["lb"]
    assert lb["image"].startswith("nginx:")
    assert lb["ports"] == ["5000:5000"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    assert set(lb["depends_on"]) == set(nodes)
    assert all(lb["depends_on"][name]["condition"] == "service_healthy" for name in nodes)


def nginx_conf() -> str:
    return (ROOT / "deploy" / "nginx.conf").read_text()


def nginx_block(text: str, opening: str) -> str:
    """The body of the block that starts with `opening` (e.g. "upstream vpiska")."""
    start = text.index(opening + " {") + len(opening) + 2
    depth, end = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        end += 1
    return text[start:end - 1]


def nginx_directives(block: str, name: str) -> list[list[str]]:
    """The arguments of every `name …;` directive in `block` (comments left out)."""
    code = "\n".join(line.split("#", 1)[0] for line in block.splitlines())
    return [statement.split()[1:] for statement in code.replace("{", ";").split(";")
            if statement.split()[:1] == [name]]


def test_nginx_passes_websockets_on_and_balances_the_three_nodes() -> None:
    text = nginx_conf()
    port = dockerfile()["env"]["SERVER_PORT"]
    upstream = nginx_block(text, "upstream vpiska")
    servers = [arguments[0] for arguments in nginx_directives(upstream, "server")]
    assert servers == [f"node-{n}:{port}" for n in (1, 2, 3)]  # the compose services
    assert all(f"node-{n}" in compose()["services"] for n in (1, 2, 3))

    server = nginx_block(text, "server")
    assert nginx_directives(server, "listen") == [["5000"]]
    assert nginx_directives(server, "proxy_http_version") == [["1.1"]]
    headers = {arguments[0]: arguments[1] for arguments in
               nginx_directives(server, "proxy_set_header")}
    assert headers["Upgrade"] == "$http_upgrade"
    assert headers["Connection"] == "$connection_upgrade"
    upgrade = nginx_block(text, "map $http_upgrade $connection_upgrade")
    assert ["default", "upgrade"] in [line.split() for line in upgrade.split(";")]
    for location in ("location /", "location /api/v1/websockets/"):
        block = nginx_block(server, location)
        assert nginx_directives(block, "proxy_pass") == [["http://vpiska"]]
        # One proxy_set_header in a location and none of the server's would apply there.
        assert not nginx_directives(block, "proxy_set_header")

    sockets = nginx_block(server, "location /api/v1/websockets/")
    ping = Config().ws_ping_seconds
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        (value,) = nginx_directives(sockets, timeout)[0]
        seconds = int(value[:-1]) * {"s": 1, "m": 60, "h": 3600}[value[-1]]
        assert seconds >= 60 * ping  # far past the nodes' own keep-alive


def nginx_executable() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx)")
    return path


async def test_nginx_config_balances_three_nodes_and_carries_room_sockets(
    tmp_path: Path, nursery: trio.Nursery, cluster: StartCluster
) -> None:
    """deploy/nginx.conf run by this machine's nginx in front of three plain nodes (no Redis:
    each serves a room of the one event, which they all found open when they started)."""
    nginx = nginx_executable()
    group = await cluster(1, redis=None, LOGGING_TRACE_REQUESTS="true")
    first = await group.server(group.nodes[0])
    _, token = await token_for(first)
    event = await first.ok("/api/v1/events/create", {
        "name": "party", "address": "a", "coordinates": {"x": 1, "y": 2}}, token=token)
    await group.start_nodes(2, LOGGING_TRACE_REQUESTS="true")

    port = free_port()
    text = nginx_conf()
    for n, node in enumerate(group.nodes, 1):
        text = text.replace(f"server node-{n}:5000", f"server 127.0.0.1:{node.port}")
    text = text.replace("listen 5000;", f"listen 127.0.0.1:{port};")
    text = text.replace("error_log /dev/stderr warn;", "error_log stderr notice;")
    temp = " ".join(f"{kind}_temp_path {tmp_path / kind};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    text = text.replace("http {", f"http {{\n    {temp}", 1)
    assert "node-" not in text.replace("# ", "")
    (tmp_path / "nginx.conf").write_text(text)
    process = await trio.lowlevel.open_process(
        [nginx, "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
         "-g", f"daemon off; pid {tmp_path / 'nginx.pid'};"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    log = OutputLines()
    nursery.start_soon(log.read, process.stderr)
    try:
        with trio.fail_after(START_SECONDS):  # it listens before it starts its workers
            await log.wait_for(lambda: log.ended or any("start worker process" in x
                                                        for x in log.lines))
        assert not log.ended, "\n".join(log.lines)
        balancer = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=balancer, timeout=WAIT_SECONDS) as http:
            for i in range(9):
                response = await http.get("/healthz", headers={"X-Request-Id": f"lb-{i}"})
                assert response.status_code == 200
            for node in group.nodes:  # each node served some of them
                await node.wait_for_line(lambda x: str(x.get("request_id")).startswith("lb-"))

            # A room socket through the balancer: the upgrade, the join's frame, a chat line.
            crowd = Crowd(nursery, Server(balancer, first.config, http, first.store))
            member = await crowd.join((await token_for(first))[1], event["id"])
            await member.wait_for(lambda m: m.counts()[-1:] == [1])
            await member.say("through nginx")
            await member.wait_for(lambda m: m.chat() == ["through nginx"])
            await crowd.aclose()

            # A node gone: its requests go to the others, none fails.
            group.nodes[0].sigkill()
            await group.nodes[0].wait()
            for _ in range(6):
                assert (await http.get("/healthz")).status_code == 200
    finally:
        process.terminate()
        with trio.move_on_after(WAIT_SECONDS):
            await process.wait()
        if process.returncode is None:
            process.kill()
