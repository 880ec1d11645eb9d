"""Many nodes, one Redis, one store: vpiska as a cluster (docs/cluster.md).

Without REDIS_URL none of this runs. With it, each process is a node: an event's actor runs on
exactly one node at a time (the holder of its lease, `leases.py`, placed by `nodes.py`), its
frames reach the sockets on every other node through Redis once per event (`owner.py` out,
`gateway.py` in), and requests for it reach it from any node (`rpc.py`). `node.py` wires the
node's parts (`membership.py`, `ownership.py`, `routing.py`, `cluster_channel.py`) and does
what takes them all: stepping aside from a lost store, and leaving.
"""
