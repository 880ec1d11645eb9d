"""Members who join through a gateway while the event's owner leaves (SIGTERM) are never told
the room failed (issue 22): a join the leaving owner took and never answered goes to the next
owner, and one no owner answered in time is told to try again (1012), not 1011.

(tests/test_gateway.py shows the same against a fake owner that never answers.)
"""

from __future__ import annotations

import trio

from tests.helpers.clients import Crowd, host_event, token_for
from tests.helpers.cluster_fixtures import RedisServer, StartCluster
from tests.helpers.cluster_state import UNLIMITED, diagnosed, owner_now

JOINERS = 20


async def test_members_joining_through_a_gateway_while_its_owner_leaves_are_never_told_it_failed(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    group = await cluster(2, redis=redis_server, **UNLIMITED)
    async with diagnosed(group):
        servers = [await group.server(node) for node in group.nodes]
        _, event_id = await host_event(servers[0])
        owner = await owner_now(redis_server, event_id, group)
        gateway = servers[1 - group.nodes.index(owner)]
        tokens = [(await token_for(gateway))[1] for _ in range(JOINERS)]
        refused: list[int | None] = []  # close codes of joins that ended before their room
        joins = 0
        warmed_up = trio.Event()  # as many joins as joiners went through the gateway
        joined_again = trio.Event()  # every joiner joined again once the owner had left
        owner_gone_at: int | None = None

        async def keep_joining(token: str) -> None:
            nonlocal joins
            while not joined_again.is_set():
                crowd = Crowd(nursery, gateway)
                try:
                    await crowd.join(token, event_id)
                    joins += 1
                    if joins >= JOINERS:
                        warmed_up.set()
                except AssertionError:  # closed before its first frame
                    refused.append(crowd.members[-1].close_code)
                finally:
                    await crowd.aclose()
                if owner_gone_at is not None and joins >= owner_gone_at + JOINERS:
                    joined_again.set()

        async with trio.open_nursery() as joining:
            for token in tokens:
                joining.start_soon(keep_joining, token)
            with trio.fail_after(60):
                await warmed_up.wait()
                owner.sigterm()
                assert await owner.wait() == 0
                owner_gone_at = joins
                await joined_again.wait()
        assert 1011 not in refused, refused
        assert set(refused) <= {1012}, refused
