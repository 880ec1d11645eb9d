"""What a test reads of a cluster whose nodes are processes of their own: the event's owner as
Redis has it, a node's id and readiness, and the nodes' logs when a test fails. State in
another process has nothing to wait on, so `eventually` asks again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import coredis
import trio

from tests.helpers.cluster_fixtures import Cluster, Node, RedisServer
from tests.helpers.server import Server

TTL = 2.0  # the lease TTL of these clusters: failover is bounded by it
UNLIMITED = {"CHAT_RATE_PER_SECOND": "1000000", "CHAT_BURST": "1000000",
             "LEASE_TTL_SECONDS": str(TTL)}


def node_id(node: Node) -> str:
    serving = next(line for line in node.lines() if line["event"] == "serving")
    return str(serving["cluster_node"])


async def owner_of(redis_server: RedisServer, event_id: str, group: Cluster) -> Node | None:
    """The node holding the event's lease right now (None: nobody)."""
    async with coredis.Redis.from_url(redis_server.url) as client:
        value = await client.get(f"vpiska:lease:{event_id}")
    if value is None:
        return None
    holder = value.decode().split(" ")[0]
    return next((node for node in group.nodes if node.returncode is None
                 and node_id(node) == holder), None)


@asynccontextmanager
async def diagnosed(group: Cluster) -> AsyncIterator[None]:
    """On a failure, print what the nodes logged above info (pytest shows it with the
    failure): a cluster test's assertion alone rarely says which node did what."""
    try:
        yield
    except BaseException:
        for node in group.nodes:
            print(f"--- {node.name} (pid {node.pid}, exit {node.returncode})")
            for line in node.lines():
                if line["level"] != "info" or "cluster" in line["logger"]:
                    print({k: v for k, v in line.items() if k not in ("time", "logger")})
            if node.stderr:
                print(node.stderr[-2000:])
        raise


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    """Ask `check` until it is true, within `seconds`. For state that lives in another
    process (Redis, a node): there is nothing to wait on but asking again."""
    with trio.fail_after(seconds):
        while not await check():  # noqa: ASYNC110 (another process: no wake-up to wait on)
            await trio.sleep(0.02)  # how often to ask, not a wait for anything


async def owner_now(redis_server: RedisServer, event_id: str, group: Cluster) -> Node:
    """The event's owner, once there is one (an event is activated on its first use)."""
    owner: list[Node] = []

    async def owned() -> bool:
        node = await owner_of(redis_server, event_id, group)
        owner[:] = [] if node is None else [node]
        return bool(owner)

    await eventually(owned)
    return owner[0]


async def all_ready(servers: list[Server]) -> None:
    """Return once every one of `servers` answers /readyz with 200."""
    for server in servers:

        async def ready_again(server: Server = server) -> bool:
            return await ready(server) == 200

        await eventually(ready_again)


async def ready(server: Server) -> int:
    return (await server.http.get("/readyz")).status_code
