#!/usr/bin/env python3
"""
Leader failover time (issue 5, "Performance"): three rhemad nodes on one
backend, SIGKILL the leader N times (default 20), and measure how long the
cluster has no leader each time -- from the SIGKILL until another node
answers GET /v1/cluster/leader with "is_leader": true.

Target: median at most the lease TTL plus one renewal interval.

Each kill lands at a random point of the leader's renewal cycle (a random
pause of 0 .. one renewal interval before it), so the numbers cover the whole
range: a leader killed just after renewing leaves a full TTL on its lease, one
killed just before leaves TTL minus one interval.  After each kill the dead
node is started again (as a follower) so that three nodes are always there.

usage: bench/failover_bench.py [--backend sqlite|redis|postgres] [--kills 20]
                               [--lease 3] [--heartbeat 1] [--seed N]
Environment: top_builddir (rhemad), RHEMA_PLUGIN_DIR, as the tests.
PostgreSQL and Redis servers are started by the tests' fixtures classes on
free loopback ports in a temporary directory and stopped at the end.
"""

import argparse
import importlib.util
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAULT_CONFTEST = HERE.parent / "tests" / "fault" / "conftest.py"


def load_fault_helpers():
    spec = importlib.util.spec_from_file_location("rhema_fault_conftest", FAULT_CONFTEST)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def is_leader(d):
    try:
        r = d.request("GET", "/v1/cluster/leader", timeout=1.0)
        if r.status != 200:
            return None
        b = r.json()
        return b["epoch"] if b["is_leader"] else None
    except (OSError, ValueError):
        return None


def find_leader(nodes, exclude=None, timeout=10.0, step=0.01):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for d in nodes:
            if d is not exclude and d.running():
                e = is_leader(d)
                if e is not None:
                    return d, e
        time.sleep(step)
    return None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="sqlite", choices=("sqlite", "redis", "postgres"))
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--lease", type=int, default=3, help="leader_lease_seconds")
    ap.add_argument("--heartbeat", type=int, default=1, help="heartbeat_interval_seconds")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rnd = random.Random(seed)
    fx = load_fault_helpers()
    renew = a.lease / 3.0
    target = a.lease + renew

    tmp = Path(tempfile.mkdtemp(prefix="rhema-failover."))
    server = None
    nodes = []
    times, epochs = [], []
    try:
        if a.backend == "sqlite":
            config = fx.sqlite_config(tmp / "cluster.db")
        elif a.backend == "redis":
            server = fx.RedisServer(tmp / "redis").init()
            config = server.rhema_config()
        else:
            server = fx.PgServer(tmp / "pg").init()
            config = server.rhema_config()
        overrides = ["distributed.enabled=true",
                     f"distributed.cluster.leader_lease_seconds={a.lease}",
                     f"distributed.cluster.heartbeat_interval_seconds={a.heartbeat}",
                     f"distributed.cluster.node_timeout_seconds={max(a.lease, a.heartbeat + 1)}",
                     "logging.access_log=false"]
        for i in (1, 2, 3):
            nodes.append(fx.Daemon(tmp, name=f"n{i}", config=config,
                                   overrides=overrides + [f"distributed.node.node_id=n{i}"]))
        for d in nodes:
            d.start()
        leader, epoch = find_leader(nodes)
        if leader is None:
            sys.exit("no leader after startup")
        epochs.append(epoch)
        print(f"backend {a.backend}: lease {a.lease} s, renewal every {renew:.3f} s, "
              f"target median <= {target:.3f} s; {a.kills} SIGKILLs (seed {seed})", flush=True)
        for k in range(a.kills):
            time.sleep(rnd.uniform(0.0, renew))
            t0 = time.monotonic()
            leader.send(signal.SIGKILL)
            leader.wait(5)
            new, e = find_leader(nodes, exclude=leader, timeout=a.lease * 4)
            dt = time.monotonic() - t0
            if new is None:
                sys.exit(f"kill {k + 1}: no new leader within {dt:.2f} s")
            if e <= epochs[-1]:
                sys.exit(f"kill {k + 1}: epoch {e} not above {epochs[-1]}")
            times.append(dt)
            epochs.append(e)
            print(f"  kill {k + 1:2d}: {leader.name} -> {new.name}, epoch {e}, "
                  f"{dt * 1000:7.1f} ms", flush=True)
            leader.start()  # back as a follower
            leader = new
        med = statistics.median(times)
        q = sorted(times)
        p90 = q[min(len(q) - 1, int(round(0.9 * (len(q) - 1))))]
        verdict = "meets" if med <= target else "MISSES"
        print(f"failover over {len(times)} SIGKILLs on {a.backend}: "
              f"min {q[0]:.3f} s, median {med:.3f} s, p90 {p90:.3f} s, max {q[-1]:.3f} s; "
              f"target median <= {target:.3f} s (lease + one renewal): {verdict}")
        return 0 if med <= target else 1
    finally:
        for d in nodes:
            d.kill()
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    sys.exit(main())
