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

import pytest
import trio
import yaml

from tests.test_process import env, vpiska_process
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
