"""
The cluster module on one node (issue 5, items 0-2; DESIGN.md §5, §7):

  - distributed.enabled = false: the node leads itself with epoch 1, and
    GET /v1/cluster is Healthy without any lease;
  - enabled, one node on SQLite: it registers, takes the lease, reports a
    Healthy cluster, hands the lease back on SIGTERM, and a restart gets a
    larger epoch;
  - Observers, and non-Coordinators when enable_failover = false, never lead;
  - fencing on the consensus writes: X-Rhema-Epoch lower than the current
    epoch is 409 fenced, equal or higher passes, malformed is 400;
  - unsafe timings and a backend that cannot be shared are refused at
    startup and by rhemad -t, with a message that names the keys.
"""

import signal
import time

import pytest

from conftest import (PLUGIN_DIR, memory_config, require_plugin, run_rhemad, sqlite_config,
                      wait_until)

FAST = [  # lease 3 s: renewed every 1 s, retried for 1 s (3 x 1 <= 3)
    "distributed.enabled=true",
    "distributed.cluster.leader_lease_seconds=3",
    "distributed.cluster.heartbeat_interval_seconds=1",
    "distributed.cluster.node_timeout_seconds=3",
]


def leader_view(d):
    st, _, body = d.json("GET", "/v1/cluster/leader")
    assert st == 200, body
    return body


def wait_leader(d, timeout=5):
    ok = wait_until(lambda: leader_view(d)["is_leader"], timeout, 0.05)
    assert ok, f"node did not become leader; log:\n{d.log()}"
    return leader_view(d)


def single_node(daemons, tmp_path, *extra, name="solo"):
    require_plugin("sqlite")
    return daemons(name, config=sqlite_config(tmp_path / "cluster.db"),
                   overrides=FAST + [f"distributed.node.node_id={name}"] + list(extra))


def assert_error(status, body, want_status, code):
    assert status == want_status, f"expected {want_status}, got {status}: {body}"
    assert body["error"]["code"] == code, body


# ---------------------------------------------------------------- disabled

def test_disabled_node_leads_itself_with_epoch_1(daemon):
    st, _, h = daemon.json("GET", "/v1/cluster")
    assert st == 200, h
    assert h["status"] == "Healthy" and h["enabled"] is False
    assert h["leader"] == h["node_id"] and h["epoch"] == 1 and h["is_leader"] is True
    assert h["total_nodes"] == 1 and h["online_nodes"] == 1 and h["offline_nodes"] == 0
    assert len(h["nodes"]) == 1 and h["nodes"][0]["status"] == "Online"
    node = h["nodes"][0]
    for k in ("node_id", "name", "address", "role", "status", "capabilities", "metadata",
              "last_heartbeat", "uptime_seconds"):
        assert k in node, f"NodeInfo lacks {k}: {node}"
    # the default node id: hostname ":" listen port
    assert h["node_id"].endswith(f":{daemon.port}"), h["node_id"]
    lv = leader_view(daemon)
    assert lv["is_leader"] is True and lv["epoch"] == 1 and lv["leader"] == h["node_id"]
    st, _, nodes = daemon.json("GET", "/v1/cluster/nodes")
    assert st == 200 and [n["node_id"] for n in nodes["items"]] == [h["node_id"]]
    assert nodes["next_cursor"] is None


def test_cluster_routes_methods_and_404(daemon):
    st, h, body = daemon.json("POST", "/v1/cluster/leader", {})
    assert st == 405 and "GET" in h.get("Allow", ""), body
    st, _, body = daemon.json("GET", "/v1/cluster/nope")
    assert st == 404, body


def test_disabled_fencing_epoch_1(daemon):
    path = "/v1/consensus/fence-d/state"
    st, _, body = daemon.json("PUT", path, {"term": 1}, headers={"X-Rhema-Epoch": "0"})
    assert_error(st, body, 409, "fenced")
    st, _, body = daemon.json("PUT", path, {"term": 1}, headers={"X-Rhema-Epoch": "1"})
    assert st in (200, 201), body


# ---------------------------------------------------------------- enabled, one node

def test_single_node_on_sqlite_leads_and_hands_back(daemons, tmp_path):
    d = single_node(daemons, tmp_path).start()
    lv = wait_leader(d)
    assert lv["leader"] == "solo" and lv["epoch"] >= 1 and lv["node"]["node_id"] == "solo"
    first_epoch = lv["epoch"]
    st, _, h = d.json("GET", "/v1/cluster")
    assert st == 200, h
    assert h["enabled"] is True and h["status"] == "Healthy", h
    assert h["leader"] == "solo" and h["epoch"] == first_epoch and h["online_nodes"] == 1
    assert [(n["node_id"], n["status"]) for n in h["nodes"]] == [("solo", "Online")]
    assert h["leader_address"] == f"127.0.0.1:{d.port}"

    mark = d.log_size()
    assert d.stop(signal.SIGTERM) == 0
    tail = d.log()[mark:]
    assert "handed back the lease" in tail and "is leaving" in tail, tail

    # a restart is a new holder: a larger epoch, at once (the lease was released)
    t0 = time.monotonic()
    d.start()
    lv = wait_leader(d)
    assert lv["epoch"] > first_epoch, (lv, first_epoch)
    assert time.monotonic() - t0 < 3.0, "a released lease should be taken at once"


def test_min_nodes_forming(daemons, tmp_path):
    d = single_node(daemons, tmp_path, "distributed.cluster.min_nodes=3").start()
    wait_leader(d)
    st, _, h = d.json("GET", "/v1/cluster")
    assert st == 200 and h["status"] == "Forming" and h["total_nodes"] == 1, h


@pytest.mark.parametrize("extra", [
    ["distributed.node.role=Observer"],
    ["distributed.node.role=Worker", "distributed.cluster.enable_failover=false"],
], ids=["observer", "worker-without-failover"])
def test_ineligible_node_never_leads(daemons, tmp_path, extra):
    d = single_node(daemons, tmp_path, *extra).start()
    deadline = time.monotonic() + 2.5  # more than two renew intervals
    while time.monotonic() < deadline:
        lv = leader_view(d)
        assert lv["is_leader"] is False and lv["leader"] is None, lv
        time.sleep(0.1)
    st, _, h = d.json("GET", "/v1/cluster")
    assert st == 200 and h["status"] == "Unhealthy" and h["leader"] is None, h
    node = h["nodes"][0]
    assert "leader" not in node["capabilities"], node


def test_coordinator_leads_without_failover(daemons, tmp_path):
    d = single_node(daemons, tmp_path, "distributed.node.role=Coordinator",
                    "distributed.cluster.enable_failover=false").start()
    assert wait_leader(d)["leader"] == "solo"


def test_fencing_on_consensus_writes(daemons, tmp_path):
    d = single_node(daemons, tmp_path).start()
    # a first holder, released, so that the running one has epoch >= 2
    wait_leader(d)
    d.stop(signal.SIGTERM)
    d.start()
    epoch = wait_leader(d)["epoch"]
    assert epoch >= 2
    node = "fence-1"
    path = f"/v1/consensus/{node}/state"

    def put(hdr):
        headers = {} if hdr is None else {"X-Rhema-Epoch": hdr}
        return d.json("PUT", path, {"term": 1}, headers=headers)

    st, h, body = put(str(epoch - 1))
    assert_error(st, body, 409, "fenced")
    assert h.get("X-Rhema-Epoch") == str(epoch)
    assert str(epoch) in body["error"]["message"]
    st, _, body = d.json("GET", path)
    assert st == 404, "a fenced write must change nothing"
    for hdr in (str(epoch), str(epoch + 1), None):
        st, _, body = put(hdr)
        assert st in (200, 201), (hdr, body)
    for bad in ("abc", "-1", "1.5", "2x", "18446744073709551616", ""):
        st, _, body = put(bad)
        assert_error(st, body, 400, "bad_header")
    # the other consensus writes are fenced too; reads are not
    old = {"X-Rhema-Epoch": "1"}
    st, _, body = d.json("POST", f"/v1/consensus/{node}/entries",
                         {"index": 1, "term": 1, "command": "set", "data": {}}, headers=old)
    assert_error(st, body, 409, "fenced")
    st, _, body = d.json("POST", f"/v1/consensus/{node}/commit", {"index": 0}, headers=old)
    assert_error(st, body, 409, "fenced")
    st, _, body = d.json("GET", path, headers=old)
    assert st == 200, body


def test_max_nodes_refuses_another_node(daemons, tmp_path):
    a = single_node(daemons, tmp_path, "distributed.cluster.max_nodes=1", name="a").start()
    wait_leader(a)
    b = single_node(daemons, tmp_path, "distributed.cluster.max_nodes=1", name="b")
    b.spawn()
    assert b.wait(10) == 1, b.log()
    assert "distributed.cluster.max_nodes is 1" in b.log(), b.log()
    st, _, nodes = a.json("GET", "/v1/cluster/nodes")
    assert st == 200 and [n["node_id"] for n in nodes["items"]] == ["a"], nodes


# ---------------------------------------------------------------- refused configurations

@pytest.mark.parametrize("lease,hb", [(5, 2), (2, 1), (1, 1), (8, 3)])
def test_unsafe_timings_refused(daemons, tmp_path, lease, hb):
    require_plugin("sqlite")
    overrides = ["distributed.enabled=true",
                 f"distributed.cluster.leader_lease_seconds={lease}",
                 f"distributed.cluster.heartbeat_interval_seconds={hb}",
                 "distributed.cluster.node_timeout_seconds=30"]
    d = daemons("bad", config=sqlite_config(tmp_path / "bad.db"), overrides=overrides)
    d.spawn()
    assert d.wait(10) == 1, d.log()
    log = d.log()
    assert "distributed.cluster.heartbeat_interval_seconds" in log, log
    assert "distributed.cluster.leader_lease_seconds" in log, log
    args = ["-t", "-c", str(d.conf), "-P", str(PLUGIN_DIR)]
    for o in overrides:
        args += ["-o", o]
    r = run_rhemad(args)
    assert r.returncode == 1 and "leader_lease_seconds" in r.stderr, r.stderr


def test_safe_timings_pass_config_test(daemons, tmp_path):
    require_plugin("sqlite")
    d = daemons("ok", config=sqlite_config(tmp_path / "ok.db"), overrides=FAST)
    args = ["-t", "-c", str(d.conf), "-P", str(PLUGIN_DIR)]
    for o in FAST:
        args += ["-o", o]
    r = run_rhemad(args)
    assert r.returncode == 0, r.stderr


def test_memory_backend_refused_when_enabled(daemons):
    d = daemons("mem", config=memory_config(), overrides=["distributed.enabled=true"])
    d.spawn()
    assert d.wait(10) == 1, d.log()
    log = d.log()
    assert "distributed.enabled" in log and "persistence.backend 'memory'" in log, log
