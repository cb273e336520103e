"""
Agent management limits and timeouts (issue 12, item 4), end to end:

  ai_service.agent_management.max_concurrent_agents: registering an agent
  beyond it is refused with 409 agent_limit -- under concurrent
  registrations, on one node and on two nodes sharing a backend; updating a
  registered agent never is; deleting one frees a slot.

  ai_service.agent_management.agent_timeout_seconds: an agent whose
  heartbeat stops becomes Offline, one Busy/Working on the same task for
  longer becomes Failed, each with a transition in its history (the
  maintenance pass's work).

  The old names max_agents / heartbeat_timeout_seconds: accepted with a
  notice, refused beside the new ones (rhemad -t).

Timeouts use agent_timeout_seconds = 1 and poll with a bounded deadline;
nothing asserts how long anything took.
"""

import threading
import uuid

import pytest

from conftest import PLUGIN_DIR, require_plugin, run_rhemad, sqlite_config, wait_until

AM = "ai_service.agent_management"


def agent_body(**kw):
    body = {"name": "worker", "agent_type": "coder"}
    body.update(kw)
    return body


def new_id(prefix="a"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def put_all_at_once(nodes, ids):
    """PUT every id (a new agent) from its own thread, all released together;
    the statuses and bodies by id."""
    results = {}
    lock = threading.Lock()
    start = threading.Barrier(len(ids))

    def run(node, aid):
        conn = node.connection()
        start.wait(30)
        r = node.request("PUT", f"/v1/agents/{aid}", agent_body(), conn=conn)
        with lock:
            results[aid] = (r.status, r.json())
        conn.close()
    threads = [threading.Thread(target=run, args=(nodes[i % len(nodes)], aid))
               for i, aid in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == len(ids), "a registration did not answer"
    return results


def check_limit(nodes, n):
    """n concurrent registrations of new ids under a limit of n - 2."""
    ids = [new_id() for _ in range(n)]
    results = put_all_at_once(nodes, ids)
    ok = [aid for aid, (s, _) in results.items() if s == 201]
    refused = [aid for aid, (s, _) in results.items() if s == 409]
    assert len(ok) == n - 2, results
    assert len(refused) == 2, results
    for aid in refused:
        body = results[aid][1]
        assert body["error"]["code"] == "agent_limit", body
        assert "max_concurrent_agents" in body["error"]["message"], body
        # a refused registration wrote nothing
        s, _, _ = nodes[0].json("GET", f"/v1/agents/{aid}")
        assert s == 404
    for node in nodes:
        s, _, stats = node.json("GET", "/v1/agents/stats")
        assert s == 200
        assert stats["total_agents"] == n - 2, stats
    return ok, refused


@pytest.fixture
def limited(daemons):
    def make(base=None, names=("rhemad",), limit=8):
        kw = {"config": base} if base else {}
        return [daemons(name, overrides=[f"{AM}.max_concurrent_agents={limit}"], **kw).start()
                for name in names]
    return make


def test_limit_holds_under_concurrent_registrations(limited):
    node, = limited(limit=10)
    ok, refused = check_limit([node], 12)

    # an update of a registered agent is never refused, nor a heartbeat
    s, _, a = node.json("PUT", f"/v1/agents/{ok[0]}", agent_body(status="Busy",
                                                                 current_task_id="t1"))
    assert s == 200, a
    s, _, a = node.json("POST", f"/v1/agents/{ok[1]}/heartbeat", {"status": "Working"})
    assert s == 200, a
    # PUT of an absent id is a registration: still refused
    s, _, body = node.json("PUT", f"/v1/agents/{refused[0]}", agent_body())
    assert s == 409 and body["error"]["code"] == "agent_limit", body

    # a delete frees one slot, and only one
    s, _, _ = node.json("DELETE", f"/v1/agents/{ok[2]}")
    assert s in (200, 204)
    s, _, a = node.json("PUT", f"/v1/agents/{refused[0]}", agent_body())
    assert s == 201, a
    s, _, body = node.json("PUT", f"/v1/agents/{refused[1]}", agent_body())
    assert s == 409 and body["error"]["code"] == "agent_limit", body


def test_limit_holds_across_two_nodes_on_sqlite(limited, tmp_path):
    require_plugin("sqlite")
    nodes = limited(base=sqlite_config(tmp_path / "shared.db"), names=("n1", "n2"), limit=10)
    check_limit(nodes, 12)


def test_limit_holds_across_two_nodes_on_redis(limited, redis):
    _, port = redis
    base = ('persistence: { backend = "redis"; redis = { host = "127.0.0.1"; '
            f'port = {port}; password = "s3cret pass"; timeout_ms = 2000; }}; }};\n')
    nodes = limited(base=base, names=("n1", "n2"), limit=10)
    check_limit(nodes, 12)


@pytest.fixture
def fast(daemons):
    return daemons(overrides=[f"{AM}.agent_timeout_seconds=1"]).start()


def status_of(node, aid):
    s, _, a = node.json("GET", f"/v1/agents/{aid}")
    assert s == 200, a
    return a


def transitions_of(node, aid):
    s, _, page = node.json("GET", f"/v1/agents/{aid}/transitions")
    assert s == 200, page
    return page["items"]


def status_event(node, aid, to):
    """The agent.status event of aid's transition to `to` (the change feed, since 0)."""
    s, _, body = node.json("GET", f"/v1/events?since=0&types=agent.status&agent={aid}&wait=5s")
    assert s == 200, body
    evs = [e for e in body["items"] if e["id"] == aid and e["to"] == to]
    assert len(evs) == 1, body
    assert evs[0]["version"] == evs[0]["revision"], evs
    return evs[0]


def test_heartbeat_timeout_makes_the_agent_offline(fast):
    aid = new_id()
    s, _, a = fast.json("PUT", f"/v1/agents/{aid}", agent_body(status="Idle"))
    assert s == 201, a
    assert a["is_online"] is True
    assert wait_until(lambda: status_of(fast, aid)["status"] == "Offline", 30, step=0.1), \
        status_of(fast, aid)
    a = status_of(fast, aid)
    assert a["is_online"] is False
    last = transitions_of(fast, aid)[-1]
    assert (last["from_status"], last["to_status"]) == ("Idle", "Offline"), last
    assert last["reason"] == "heartbeat timeout", last
    # the sweep's transition is in the change feed, as agent.status (issue 12 item 4)
    assert status_event(fast, aid, "Offline")["from"] == "Idle"
    s, _, stats = fast.json("GET", "/v1/agents/stats")
    assert stats["by_status"]["Offline"] >= 1 and stats["by_status"]["Idle"] == 0, stats
    # the agent comes back with a heartbeat; the timeout made one transition only
    s, _, a = fast.json("POST", f"/v1/agents/{aid}/heartbeat", {"status": "Idle"})
    assert s == 200 and a["is_online"] is True and a["status"] == "Idle", a
    assert [t["reason"] for t in transitions_of(fast, aid)].count("heartbeat timeout") == 1


def test_task_timeout_makes_the_agent_failed(fast):
    aid = new_id()
    # a heartbeat dated far ahead keeps the heartbeat timeout out of the way:
    # only the task's time runs out
    s, _, a = fast.json("PUT", f"/v1/agents/{aid}",
                        agent_body(status="Busy", current_task_id="task-7",
                                   last_heartbeat="2999-01-01T00:00:00Z"))
    assert s == 201, a
    assert isinstance(a["task_started_at"], str), a
    assert wait_until(lambda: status_of(fast, aid)["status"] == "Failed", 30, step=0.1), \
        status_of(fast, aid)
    a = status_of(fast, aid)
    assert a["current_task_id"] == "task-7", a
    last = transitions_of(fast, aid)[-1]
    assert (last["from_status"], last["to_status"]) == ("Busy", "Failed"), last
    assert last["reason"].startswith("task timeout after "), last
    assert last["reason"].endswith(" s"), last
    assert status_event(fast, aid, "Failed")["from"] == "Busy"


def test_an_agent_without_a_task_is_not_failed(daemons):
    # Busy with no current_task_id has no task to time; Idle is never Failed
    node = daemons(overrides=[f"{AM}.agent_timeout_seconds=1"]).start()
    busy, idle, timed = new_id("busy"), new_id("idle"), new_id("timed")
    far = "2999-01-01T00:00:00Z"
    for aid, body in ((busy, agent_body(status="Busy", last_heartbeat=far)),
                      (idle, agent_body(status="Idle", last_heartbeat=far)),
                      (timed, agent_body(status="Working", current_task_id="t",
                                         last_heartbeat=far))):
        s, _, a = node.json("PUT", f"/v1/agents/{aid}", body)
        assert s == 201, a
    # once the timed one has failed, the sweep has passed over the others too
    assert wait_until(lambda: status_of(node, timed)["status"] == "Failed", 30, step=0.1)
    assert status_of(node, busy)["status"] == "Busy"
    assert status_of(node, idle)["status"] == "Idle"


def write_conf(tmp_path, text):
    p = tmp_path / "agents.conf"
    p.write_text('persistence: { backend = "memory"; };\n' + text)
    return p


def test_old_names_are_accepted_with_a_notice(tmp_path):
    p = write_conf(tmp_path, "ai_service: { agent_management: {\n"
                             "  max_agents = 5;\n  heartbeat_timeout_seconds = 7; }; };\n")
    r = run_rhemad(["-t", "-c", str(p), "-P", str(PLUGIN_DIR)])
    assert r.returncode == 0, r.stderr
    # line 1 is the persistence section write_conf puts first
    assert (f"{p}:3: '{AM}.max_agents' is the old name of '{AM}.max_concurrent_agents'"
            in r.stderr), r.stderr
    assert (f"{p}:4: '{AM}.heartbeat_timeout_seconds' is the old name of "
            f"'{AM}.agent_timeout_seconds'" in r.stderr), r.stderr

    p = write_conf(tmp_path, "ai_service: { agent_management: {\n"
                             "  max_concurrent_agents = 5;\n  agent_timeout_seconds = 7; }; };\n")
    r = run_rhemad(["-t", "-c", str(p), "-P", str(PLUGIN_DIR)])
    assert r.returncode == 0, r.stderr
    assert "old name" not in r.stderr, r.stderr


def test_old_and_new_name_together_are_refused(tmp_path):
    p = write_conf(tmp_path, "ai_service: { agent_management: {\n"
                             "  heartbeat_timeout_seconds = 7;\n"
                             "  agent_timeout_seconds = 9; }; };\n")
    r = run_rhemad(["-t", "-c", str(p), "-P", str(PLUGIN_DIR)])
    assert r.returncode != 0
    assert (f"{p}:4: '{AM}.agent_timeout_seconds' and its old name "
            f"'{AM}.heartbeat_timeout_seconds' ({p}:3) are both set" in r.stderr), r.stderr


def test_the_old_name_acts(daemons):
    # max_agents read as max_concurrent_agents: the limit acts under its old name
    node = daemons(overrides=[f"{AM}.max_agents=1"]).start()
    s, _, a = node.json("PUT", f"/v1/agents/{new_id()}", agent_body())
    assert s == 201, a
    s, _, body = node.json("PUT", f"/v1/agents/{new_id()}", agent_body())
    assert s == 409 and body["error"]["code"] == "agent_limit", body
