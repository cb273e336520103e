"""
Service registry on one node (issue 5; DESIGN.md §5 ServiceInfo, §6 services,
§7): register / list / get / delete, selection among healthy instances only,
HTTP, TCP and TTL health checks against servers this test runs on loopback,
503 when none is healthy, a per-service strategy, feedback.  SQLite backend.
"""

import http.server
import socket
import threading
import time

import pytest

from conftest import require_plugin, sqlite_config, wait_until

CHECKS = ["distributed.health_checking.interval_seconds=1",
          "distributed.health_checking.timeout_seconds=1"]


@pytest.fixture
def node(daemons, tmp_path):
    require_plugin("sqlite")
    return daemons(config=sqlite_config(tmp_path / "svc.db"), overrides=CHECKS).start()


class Upstream:
    """A tiny HTTP server on loopback whose answer the test switches."""

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
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.close()


def put(d, sid, body, **kw):
    return d.json("PUT", f"/v1/services/{sid}", body, **kw)


def selected(d, name, n=12):
    """The set of service_ids n selects return (None for a non-200)."""
    out = set()
    for _ in range(n):
        st, _, b = d.json("GET", f"/v1/services/{name}/select")
        out.add(b["service_id"] if st == 200 else None)
    return out


def test_register_list_get_delete(node):
    st, h, b = put(node, "web-1", {"name": "web", "address": "127.0.0.1:9001", "weight": 2,
                                   "metadata": {"zone": "a"}})
    assert st == 201, b
    assert h["Location"] == "/v1/services/web-1"
    assert b["health_status"] == "Healthy" and b["weight"] == 2 and b["metadata"] == {"zone": "a"}
    assert h["ETag"] == f'"{b["version"]}"'
    st, _, b2 = put(node, "web-2", {"name": "web", "address": "127.0.0.1:9002"})
    assert st == 201
    st, _, b3 = put(node, "db-1", {"name": "db", "address": "127.0.0.1:5432"})
    assert st == 201
    # update keeps registered_at, bumps the version
    st, _, u = put(node, "web-1", {"name": "web", "address": "127.0.0.1:9011"})
    assert st == 200 and u["registered_at"] == b["registered_at"] and u["version"] > b["version"]
    st, _, g = node.json("GET", "/v1/services/web-1")
    assert st == 200 and g["address"] == "127.0.0.1:9011" and g["service_id"] == "web-1"
    st, _, lst = node.json("GET", "/v1/services?name=web")
    assert st == 200 and [i["service_id"] for i in lst["items"]] == ["web-1", "web-2"]
    st, _, p1 = node.json("GET", "/v1/services?limit=2")
    assert [i["service_id"] for i in p1["items"]] == ["db-1", "web-1"] and p1["next_cursor"]
    st, _, p2 = node.json("GET", f"/v1/services?limit=2&cursor={p1['next_cursor']}")
    assert [i["service_id"] for i in p2["items"]] == ["web-2"] and p2["next_cursor"] is None
    # If-Match mismatch
    st, _, e = node.json("DELETE", "/v1/services/web-1", headers={"If-Match": '"1"'})
    assert st == 412, e
    assert node.request("DELETE", "/v1/services/web-1").status == 204
    assert node.json("GET", "/v1/services/web-1")[0] == 404
    assert selected(node, "web") == {"web-2"}
    assert node.request("DELETE", "/v1/services/web-2").status == 204
    st, _, e = node.json("GET", "/v1/services/web/select")
    assert st == 404 and e["error"]["code"] == "not_found"


def test_validation_names_fields(node):
    cases = [
        ({"address": "127.0.0.1:1"}, "'name'"),
        ({"name": "a", "address": "nope"}, "'address'"),
        ({"name": "a", "address": "h:70000"}, "'address'"),
        ({"name": "a", "address": "h:1", "weight": 0}, "'weight'"),
        ({"name": "a", "address": "h:1", "metadata": {"k": 1}}, "'metadata.k'"),
        ({"name": "a", "address": "h:1", "check": {"type": "icmp"}}, "'check.type'"),
        ({"name": "a", "address": "h:1", "check": {"type": "http", "target": "ftp://x"}},
         "'check.target'"),
        ({"name": "a", "address": "h:1", "check": {"type": "tcp"}}, "'check.target'"),
        ({"name": "a", "address": "h:1", "check": {"type": "ttl", "failure_threshold": 0}},
         "'check.failure_threshold'"),
        ({"name": "a", "address": "h:1", "check": {"type": "ttl", "bogus": 1}}, "'check.bogus'"),
        ({"name": "a", "address": "h:1", "strategy": "no_such"}, "'strategy'"),
        ({"name": "a", "address": "h:1", "service_id": "other"}, "'service_id'"),
        ({"name": "a", "address": "h:1", "extra": 1}, "'extra'"),
    ]
    for body, field in cases:
        st, _, e = put(node, "v1", body)
        assert st == 400, (body, e)
        assert field in e["error"]["message"], (body, e)
    assert node.json("GET", "/v1/services/v1")[0] == 404
    # defaults of a check come from distributed.health_checking
    st, _, b = put(node, "v1", {"name": "a", "address": "h:1", "check": {"type": "ttl"}})
    assert st == 201
    c = b["check"]
    assert (c["interval_seconds"], c["timeout_seconds"], c["failure_threshold"],
            c["success_threshold"], c["deregister_critical_after_seconds"]) == (1, 1, 3, 2, 0)


def test_select_round_robin_and_503(node):
    for i in range(3):
        assert put(node, f"rr-{i}", {"name": "rr", "address": f"127.0.0.1:{7000 + i}"})[0] == 201
    seq = [node.json("GET", "/v1/services/rr/select")[2] for _ in range(6)]
    ids = [s["service_id"] for s in seq]
    assert all(s["strategy"] == "round_robin" and s["name"] == "rr" for s in seq)
    assert sorted(ids[:3]) == ["rr-0", "rr-1", "rr-2"] and ids[3:] == ids[:3], ids
    # a service whose only instance has a TCP check on a closed port: 503
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    put(node, "dead-1", {"name": "dead", "address": f"127.0.0.1:{port}",
                         "check": {"type": "tcp", "target": f"127.0.0.1:{port}"}})
    st, _, e = node.json("GET", "/v1/services/dead/select")
    assert st == 503 and e["error"] == {"code": "unavailable",
                                        "message": "no healthy instance of 'dead'"}


def test_http_check_failure_and_recovery(node, upstream):
    fthr, sthr = 2, 2
    put(node, "ok-1", {"name": "api", "address": "127.0.0.1:9100"})
    st, _, b = put(node, "chk-1", {"name": "api", "address": f"127.0.0.1:{upstream.port}",
                                   "check": {"type": "http",
                                             "target": f"http://127.0.0.1:{upstream.port}/health",
                                             "interval_seconds": 1, "timeout_seconds": 1,
                                             "failure_threshold": fthr,
                                             "success_threshold": sthr}})
    assert st == 201 and b["health_status"] == "Unknown"
    assert wait_until(lambda: selected(node, "api", 6) == {"ok-1", "chk-1"}, 5), \
        node.json("GET", "/v1/services/chk-1")[2]
    g = node.json("GET", "/v1/services/chk-1")[2]
    assert g["health_status"] == "Healthy" and g["check_status"] == "passing"
    upstream.status = 500
    t0 = time.monotonic()
    assert wait_until(lambda: selected(node, "api", 6) == {"ok-1"}, fthr + 3), "still selected"
    # within failure_threshold intervals (+ one refresh period and slack)
    assert time.monotonic() - t0 <= fthr + 2.5
    g = node.json("GET", "/v1/services/chk-1")[2]
    assert g["health_status"] == "Unhealthy" and g["check_status"] == "critical"
    # 429 is a warning, which passes
    upstream.status = 429
    t0 = time.monotonic()
    assert wait_until(lambda: "chk-1" in selected(node, "api", 6), sthr + 3), "did not return"
    assert time.monotonic() - t0 >= sthr - 1 - 0.2  # needs success_threshold results
    g = node.json("GET", "/v1/services/chk-1")[2]
    assert g["health_status"] == "Healthy" and g["check_status"] == "warning"


def test_tcp_check(node):
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(16)
    port = lsn.getsockname()[1]
    try:
        put(node, "tcp-1", {"name": "tcpsvc", "address": f"127.0.0.1:{port}",
                            "check": {"type": "tcp", "target": f"127.0.0.1:{port}",
                                      "failure_threshold": 1, "success_threshold": 1}})
        assert wait_until(lambda: selected(node, "tcpsvc", 2) == {"tcp-1"}, 4)
    finally:
        lsn.close()
    assert wait_until(lambda: selected(node, "tcpsvc", 2) == {None}, 4)
    g = node.json("GET", "/v1/services/tcp-1")[2]
    assert g["health_status"] == "Unhealthy" and "TCP" in g["check_output"]


def test_ttl_check(node):
    assert node.request("POST", "/v1/services/nope/pass").status == 404
    put(node, "plain", {"name": "x", "address": "h:1"})
    assert node.request("POST", "/v1/services/plain/pass").status == 400
    put(node, "ttl-1", {"name": "ttlsvc", "address": "127.0.0.1:1",
                        "check": {"type": "ttl", "interval_seconds": 1, "timeout_seconds": 1,
                                  "failure_threshold": 1, "success_threshold": 1}})
    # passing while fresh (registration counts as the first pass)
    assert wait_until(lambda: selected(node, "ttlsvc", 2) == {"ttl-1"}, 3)
    # no pass for interval + timeout: critical
    assert wait_until(lambda: selected(node, "ttlsvc", 2) == {None}, 5)
    assert node.request("POST", "/v1/services/ttl-1/pass").status == 204
    assert wait_until(lambda: selected(node, "ttlsvc", 2) == {"ttl-1"}, 3)


def test_strategy_override_and_feedback(node):
    put(node, "w-1", {"name": "w", "address": "127.0.0.1:1", "weight": 3,
                      "strategy": "weighted_round_robin"})
    put(node, "w-2", {"name": "w", "address": "127.0.0.1:2", "weight": 1})
    picks = [node.json("GET", "/v1/services/w/select")[2] for _ in range(8)]
    assert {p["strategy"] for p in picks} == {"weighted_round_robin"}
    counts = {i: sum(p["service_id"] == i for p in picks) for i in ("w-1", "w-2")}
    assert counts == {"w-1": 6, "w-2": 2}, counts
    # ip_hash with a key: the same key, the same instance
    put(node, "h-1", {"name": "h", "address": "127.0.0.1:1", "strategy": "ip_hash"})
    put(node, "h-2", {"name": "h", "address": "127.0.0.1:2"})
    got = {node.json("GET", "/v1/services/h/select?key=user-42")[2]["service_id"]
           for _ in range(5)}
    assert len(got) == 1
    # least_response_time follows feedback
    put(node, "l-1", {"name": "l", "address": "127.0.0.1:1", "strategy": "least_response_time"})
    put(node, "l-2", {"name": "l", "address": "127.0.0.1:2"})
    for _ in range(5):
        assert node.request("POST", "/v1/services/l-1/feedback",
                            {"latency_ms": 500, "ok": True}).status == 204
        assert node.request("POST", "/v1/services/l-2/feedback",
                            {"latency_ms": 2, "ok": True}).status == 204
    picks = [node.json("GET", "/v1/services/l/select")[2]["service_id"] for _ in range(10)]
    assert picks.count("l-2") >= 8, picks
    # feedback validation
    st, _, e = node.json("POST", "/v1/services/l-1/feedback", {"latency_ms": -1})
    assert st == 400 and "'latency_ms'" in e["error"]["message"]
    st, _, e = node.json("POST", "/v1/services/l-1/feedback", {"latency_ms": 1, "ok": "y"})
    assert st == 400 and "'ok'" in e["error"]["message"]
    assert node.request("POST", "/v1/services/zz/feedback", {"latency_ms": 1}).status == 404
