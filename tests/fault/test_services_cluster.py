"""
The service registry across nodes (issue 5; DESIGN.md §7): three rhemad
nodes share one SQLite file (PostgreSQL too when its server binaries are
installed).  A service registered through one node is selected through
another; the leader runs the health checks; after SIGKILL of the leader the
new leader takes them over, so an instance whose HTTP check starts failing
after the failover still leaves selection on every node.
"""

import http.server
import signal
import threading
import time

import pytest

from conftest import require_plugin, sqlite_config, wait_until

LEASE_S = 3
OVERRIDES = [
    "distributed.enabled=true",
    f"distributed.cluster.leader_lease_seconds={LEASE_S}",
    "distributed.cluster.heartbeat_interval_seconds=1",
    f"distributed.cluster.node_timeout_seconds={LEASE_S}",
    "distributed.cluster.name=svctest",
    "distributed.health_checking.interval_seconds=1",
    "distributed.health_checking.timeout_seconds=1",
]
FTHR = 2


class Upstream:
    def __init__(self):
        self.status = 200
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.close()


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def shared_config(request, tmp_path):
    if request.param == "sqlite":
        require_plugin("sqlite")
        return sqlite_config(tmp_path / "cluster.db")
    server = request.getfixturevalue("pg_server" if request.param == "postgres" else
                                     "redis_server")
    return server.rhema_config()


def leader(nodes):
    for d in nodes:
        if not d.running():
            continue
        try:
            r = d.request("GET", "/v1/cluster/leader", timeout=1.0)
        except OSError:
            continue
        if r.status == 200 and r.json()["is_leader"]:
            return d
    return None


def selected(d, name, n=6):
    out = set()
    for _ in range(n):
        st, _, b = d.json("GET", f"/v1/services/{name}/select")
        out.add(b["service_id"] if st == 200 else None)
    return out


def test_registry_across_nodes_and_failover(daemons, shared_config, upstream):
    nodes = [daemons(f"n{i}", config=shared_config,
                     overrides=OVERRIDES + [f"distributed.node.node_id=n{i}"])
             for i in (1, 2, 3)]
    for d in nodes:
        d.start()
    lead = wait_until(lambda: leader(nodes), LEASE_S + 3)
    assert lead, "no leader"
    a, b = [d for d in nodes if d is not lead][:2]

    # registered through A, selected through B and the leader (each node refreshes its
    # view within a second, on its own clock: B first does not mean the leader too)
    st, _, body = a.json("PUT", "/v1/services/plain-1",
                         {"name": "plain", "address": "127.0.0.1:9001"})
    assert st == 201, body
    assert wait_until(lambda: selected(b, "plain", 2) == {"plain-1"}, 3)
    assert wait_until(lambda: selected(lead, "plain", 2) == {"plain-1"}, 3)

    # a checked instance: only the leader runs the check
    check = {"type": "http", "target": f"http://127.0.0.1:{upstream.port}/",
             "interval_seconds": 1, "timeout_seconds": 1, "failure_threshold": FTHR,
             "success_threshold": 1}
    st, _, body = a.json("PUT", "/v1/services/api-1",
                         {"name": "api", "address": f"127.0.0.1:{upstream.port}",
                          "check": check})
    assert st == 201, body
    a.json("PUT", "/v1/services/api-2", {"name": "api", "address": "127.0.0.1:9102"})
    for d in nodes:
        assert wait_until(lambda: selected(d, "api") == {"api-1", "api-2"}, 5), d.name
    assert "leading: running" in lead.log()
    for d in (a, b):
        assert "leading: running" not in d.log(), f"{d.name} ran checks without leading"

    # kill the leader; a new one takes the checks over
    lead.send(signal.SIGKILL)
    lead.wait(5)
    survivors = [a, b]
    new = wait_until(lambda: leader(survivors), LEASE_S + 4)
    assert new, "no new leader after SIGKILL"
    assert new.wait_log("leading: running", timeout=3)
    upstream.status = 500
    t0 = time.monotonic()
    for d in survivors:
        assert wait_until(lambda: selected(d, "api") == {"api-2"}, FTHR + 4), \
            f"{d.name} still selects api-1:\n{new.log()[-3000:]}"
    assert time.monotonic() - t0 <= FTHR + 4
    st, _, g = b.json("GET", "/v1/services/api-1")
    assert g["health_status"] == "Unhealthy"
    # and back
    upstream.status = 200
    for d in survivors:
        assert wait_until(lambda: "api-1" in selected(d, "api"), 5), d.name
