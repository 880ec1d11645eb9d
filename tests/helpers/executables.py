"""The servers the tests start as processes (redis-server, redis-sentinel, secantusd-py): found,
or the test is skipped on a developer's machine and failed under CI, where .ci/run and `make`
install them, so a missing one means a broken set-up, never a green run that skipped tests."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def required(name: str, install: str, installed_by: str) -> str:
    """The path of command `name`, beside this interpreter (a venv's bin) or on PATH; else
    skip the test with how to `install` it, or fail it under CI (`installed_by` says who
    installs it there)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is not None:
        return found
    reason = f"{name} is not installed ({install})"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason}; {installed_by} installs it, so CI must run these tests",
                    pytrace=False)
    pytest.skip(reason)
