from bench import client
from bench.scenarios import QUICK, room_options, window, time_limit
from bench.seed import make_seeds
from bench.servers import BENCH, running
seeds = make_seeds(BENCH / ".cache")
client.use_members(seeds.member_ids)
for rep in range(3):
    for server in ("vpiska", "node-ws"):
        options = room_options(QUICK, 1000) | {"window": window(1000), "seconds": 4.0}
        with running(server, seeds.room_db) as srv:
            r = client.run("fanout", [srv.port], [seeds.room_event_id], [srv.pid], options, time_limit(QUICK))
        print(rep, server, round(r["delivered_per_s"]), "cpu", round(r.get("server_cpu", 0), 2), "other", round(r.get("other_cpu", 0), 2), flush=True)
