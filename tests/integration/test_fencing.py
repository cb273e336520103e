"""
Fencing in the request pipeline (DESIGN.md §7, issue 15): a write that
carries an X-Rhema-Epoch older than the cluster's epoch is refused with 409
"fenced" on every route declared as a write -- sessions, agents, system
metrics, configurations, services and key management, not only consensus --
with the same error body and X-Rhema-Epoch header that consensus gives, and
it changes nothing.  Reads and pure transforms are never fenced; the
current or a newer epoch, or no header, passes; a malformed header is 400.
"""

import signal

from conftest import memory_config, require_plugin, sqlite_config, wait_until

FAST = [
    "distributed.enabled=true",
    "distributed.cluster.leader_lease_seconds=3",
    "distributed.cluster.heartbeat_interval_seconds=1",
    "distributed.cluster.node_timeout_seconds=3",
    "distributed.node.node_id=solo",
]

SESSION = {"topic": "plan the rollout", "participants": ["alice", "bob"]}
AGENT = {"name": "coder one", "agent_type": "coder", "capabilities": ["rust"],
         "assigned_scope": "services/auth"}
MESSAGE = {"id": "m1", "message_type": "proposal", "priority": "High", "sender_id": "alice",
           "recipient_ids": ["bob"], "content": "ship on friday",
           "timestamp": "2026-01-02T03:04:05Z", "requires_ack": True, "metadata": {}}
METRICS = {"cpu_usage_percent": 12.5, "memory_usage_percent": 40, "active_agents": 3,
           "total_sessions": 9, "messages_per_second": 1.5, "error_rate": 0.01}
SERVICE = {"name": "api", "address": "127.0.0.1:9"}


def leader_epoch(d):
    def leads():
        st, _, body = d.json("GET", "/v1/cluster/leader")
        return st == 200 and body["is_leader"]
    assert wait_until(leads, 5, 0.05), d.log()
    return d.json("GET", "/v1/cluster/leader")[2]["epoch"]


def moved_epoch_daemon(daemons, tmp_path):
    """A one-node cluster restarted once: its epoch is at least 2."""
    require_plugin("sqlite")
    d = daemons("solo", config=sqlite_config(tmp_path / "fence.db"), overrides=FAST).start()
    leader_epoch(d)
    d.stop(signal.SIGTERM)
    d.start()
    epoch = leader_epoch(d)
    assert epoch >= 2
    return d, epoch


def assert_fenced(st, h, body, epoch, reference=None):
    assert st == 409, (st, body)
    assert body["error"]["code"] == "fenced", body
    assert h.get("X-Rhema-Epoch") == str(epoch), h
    if reference is not None:
        assert body == reference, (body, reference)


def test_sessions_and_agents_are_fenced_like_consensus(daemons, tmp_path):
    d, epoch = moved_epoch_daemon(daemons, tmp_path)
    old = {"X-Rhema-Epoch": "0"}
    st, h, ref = d.json("PUT", "/v1/consensus/n1/state", {"term": 1}, headers=old)
    assert_fenced(st, h, ref, epoch)
    assert f"epoch 0 is older than the cluster's current epoch {epoch}" in ref["error"]["message"]

    st, h, body = d.json("PUT", "/v1/sessions/x", SESSION, headers=old)
    assert_fenced(st, h, body, epoch, ref)
    st, h, body = d.json("PUT", "/v1/agents/x", AGENT, headers=old)
    assert_fenced(st, h, body, epoch, ref)
    # refused before anything was written
    assert d.json("GET", "/v1/sessions/x")[0] == 404
    assert d.json("GET", "/v1/agents/x")[0] == 404

    # the current epoch, a newer one, or none: the write goes on
    st, _, s0 = d.json("PUT", "/v1/sessions/x", SESSION, headers={"X-Rhema-Epoch": str(epoch)})
    assert st == 201, s0
    st, _, a0 = d.json("PUT", "/v1/agents/x", AGENT, headers={"X-Rhema-Epoch": str(epoch + 1)})
    assert st == 201, a0
    assert d.json("PUT", "/v1/sessions/y", SESSION)[0] == 201

    # every other write of sessions and agents too, and it changes nothing
    for method, path, body in [("DELETE", "/v1/sessions/x", None),
                               ("POST", "/v1/sessions/x/messages", MESSAGE),
                               ("DELETE", "/v1/agents/x", None),
                               ("POST", "/v1/agents/x/heartbeat", {"status": "Busy"})]:
        st, h, got = d.json(method, path, body, headers=old)
        assert_fenced(st, h, got, epoch, ref)
    st, _, s = d.json("GET", "/v1/sessions/x")
    assert st == 200 and s["messages"] == [] and s["version"] == s0["version"], s
    st, _, a = d.json("GET", "/v1/agents/x")
    assert st == 200 and a["status"] == a0["status"] and a["version"] == a0["version"], a

    # reads are not fenced
    assert d.json("GET", "/v1/sessions/x", headers=old)[0] == 200
    assert d.json("GET", "/v1/agents/x", headers=old)[0] == 200

    # a malformed epoch on a session write is the same 400 as on consensus
    st, _, body = d.json("PUT", "/v1/sessions/x", SESSION, headers={"X-Rhema-Epoch": "2x"})
    assert st == 400 and body["error"]["code"] == "bad_header", body


def test_every_write_route_is_fenced(daemons, tmp_path):
    """epoch 1 when distributed is off: X-Rhema-Epoch 0 is older on every write."""
    d = daemons(config=memory_config()).start()
    old = {"X-Rhema-Epoch": "0"}
    writes = [("PUT", "/v1/sessions/s1", SESSION),
              ("DELETE", "/v1/sessions/s1", None),
              ("POST", "/v1/sessions/s1/messages", MESSAGE),
              ("PUT", "/v1/agents/a1", AGENT),
              ("DELETE", "/v1/agents/a1", None),
              ("POST", "/v1/agents/a1/heartbeat", None),
              ("PUT", "/v1/system/metrics", METRICS),
              ("PUT", "/v1/configurations/c1", {"config_data": {}}),
              ("PUT", "/v1/services/svc1", SERVICE),
              ("DELETE", "/v1/services/svc1", None),
              ("POST", "/v1/services/svc1/pass", None),
              ("POST", "/v1/services/svc1/feedback", {"latency_ms": 1}),
              ("PUT", "/v1/consensus/n1/state", {"term": 1}),
              ("POST", "/v1/consensus/n1/entries", {"index": 1, "term": 1, "command": "c",
                                                    "data": {}}),
              ("POST", "/v1/consensus/n1/commit", {"index": 0}),
              ("POST", "/v1/consensus/n1/applied", {"index": 0}),
              ("POST", "/v1/keys/rotate", None),
              ("POST", "/v1/keys/backup", None),
              ("POST", "/v1/keys/restore", None)]
    for method, path, body in writes:
        st, h, got = d.json(method, path, body, headers=old)
        assert st == 409 and got["error"]["code"] == "fenced", (method, path, st, got)
        assert h.get("X-Rhema-Epoch") == "1", (method, path, h)
    # reads and transforms are not writes
    for method, path in [("GET", "/v1/sessions"), ("GET", "/v1/agents"), ("GET", "/v1/cluster"),
                         ("GET", "/health"), ("GET", "/v1/consensus")]:
        st, _, got = d.json(method, path, headers=old)
        assert st == 200, (method, path, st, got)
    r = d.request("POST", "/v1/messages/compress?algorithm=none", b"hello", headers=old)
    assert r.status == 200, r.status
    # a wrong method is still 405, not a fenced write
    st, h, got = d.json("POST", "/v1/sessions/s1", SESSION, headers=old)
    assert st == 405, (st, got)
