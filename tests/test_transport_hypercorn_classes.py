"""vpiska/transport/hypercorn_classes.py: hypercorn's classes swapped in, and back, per start."""

from __future__ import annotations

from collections.abc import Iterator

import hypercorn.protocol
import hypercorn.trio.run
import pytest
from hypercorn.trio.worker_context import WorkerContext

from vpiska.transport import hypercorn_classes as transport
from vpiska.transport.connection_guard import GuardedTCPServer
from vpiska.transport.h11_protocol import VpiskaH11Protocol
from vpiska.transport.tcp_server import VpiskaTCPServer


@pytest.fixture(autouse=True)
def installed_again() -> Iterator[None]:
    yield
    transport.install()  # as every server start does: leave the suite as it found it


def test_install_puts_the_transport_where_hypercorn_looks() -> None:
    assert transport.install(enabled=True)
    assert hypercorn.trio.run.TCPServer is VpiskaTCPServer  # type: ignore[attr-defined]
    assert hypercorn.protocol.H11Protocol is VpiskaH11Protocol  # type: ignore[attr-defined]


def test_without_the_transport_hypercorn_runs_with_the_guard_alone() -> None:
    assert not transport.install(enabled=False)
    assert hypercorn.trio.run.TCPServer is GuardedTCPServer  # type: ignore[attr-defined]
    assert hypercorn.trio.run.WorkerContext is WorkerContext  # type: ignore[attr-defined]


def test_an_untested_hypercorn_gets_no_transport_and_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(transport, "installed_hypercorn", lambda: "0.19.0")
    assert not transport.install(enabled=True)
    assert hypercorn.trio.run.TCPServer is GuardedTCPServer  # type: ignore[attr-defined]
    assert [r.message for r in caplog.records] == [
        "hypercorn adapter not used: written for hypercorn 0.18.0 and wsproto's frame decoder, "
        "found hypercorn 0.19.0"]
