"""
The state-manager API end to end (DESIGN.md §5, §6): agents and their
transitions, heartbeats, the agent stats, system metrics and versioned
configurations, against the real rhemad on loopback, on the memory backend
and on SQLite.
"""

import itertools
import re
import time
import uuid

import pytest

from conftest import Daemon, memory_config, plugin_available, sqlite_config

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
STATUSES = ["Idle", "Busy", "Working", "Blocked", "Collaborating", "Offline", "Failed"]
METRICS = ["tasks_completed", "tasks_failed", "avg_completion_time_seconds", "success_rate",
           "collaboration_score", "avg_response_time_ms"]

_seq = itertools.count(1)


def new_id(prefix="a"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_seq)}"


def agent_body(**kw):
    body = {"name": "coder one", "agent_type": "coder", "capabilities": ["rust", "review"],
            "assigned_scope": "services/auth"}
    body.update(kw)
    return body


def system_body(**kw):
    body = {"cpu_usage_percent": 12.5, "memory_usage_percent": 40, "active_agents": 3,
            "total_sessions": 9, "messages_per_second": 1.5, "error_rate": 0.01}
    body.update(kw)
    return body


def etag_version(headers):
    etag = headers.get("ETag")
    assert etag is not None, "no ETag header"
    m = re.fullmatch(r'"(\d+)"', etag)
    assert m, f"ETag {etag!r} is not a strong quoted version"
    return int(m.group(1))


def assert_error(status, body, want_status, code=None, mentions=None):
    assert status == want_status, f"expected {want_status}, got {status}: {body}"
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
    if code:
        assert body["error"].get("code") == code, body
    if mentions:
        assert mentions in body["error"]["message"], \
            f"error message does not name {mentions!r}: {body['error']['message']!r}"


def page_all(d, path, limit):
    """Follow next_cursor through every page; returns (items, pages)."""
    items, pages, cursor = [], 0, None
    sep = "&" if "?" in path else "?"
    while True:
        url = f"{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        st, _, page = d.json("GET", url)
        assert st == 200, page
        assert len(page["items"]) <= limit
        items += page["items"]
        pages += 1
        cursor = page.get("next_cursor")
        if not cursor:
            return items, pages
        assert pages < 100, "pagination does not end"


# ---- daemons ----

BACKENDS = ["memory", "sqlite"]


def backend_config(backend, tmp):
    return memory_config() if backend == "memory" else sqlite_config(tmp / "agents.db")


@pytest.fixture(scope="module", params=BACKENDS)
def srv(request, tmp_path_factory):
    """A running rhemad per storage backend, shared by the tests of this module."""
    backend = request.param
    if not plugin_available(backend):
        pytest.skip(f"storage plugin '{backend}' not built")
    tmp = tmp_path_factory.mktemp(f"agents-{backend}")
    d = Daemon(tmp, name=f"rhemad-{backend}", config=backend_config(backend, tmp)).start()
    d.backend = backend
    yield d
    d.kill()


@pytest.fixture(params=BACKENDS)
def fresh(request, daemons, tmp_path):
    """A rhemad of its own (empty store) per backend, for tests that count everything."""
    backend = request.param
    if not plugin_available(backend):
        pytest.skip(f"storage plugin '{backend}' not built")
    d = daemons(config=backend_config(backend, tmp_path)).start()
    d.backend = backend
    return d


# ---- agents: create, read, update, delete ----

def test_put_creates_201_with_etag_location_and_metadata(srv):
    aid = new_id()
    st, h, rec = srv.json("PUT", f"/v1/agents/{aid}", agent_body())
    assert st == 201, rec
    assert etag_version(h) == rec["version"]
    assert h.get("Location") == f"/v1/agents/{aid}"
    assert rec["id"] == aid and rec["name"] == "coder one" and rec["agent_type"] == "coder"
    assert rec["status"] == "Idle"
    assert rec["current_task_id"] is None
    assert rec["assigned_scope"] == "services/auth"
    assert rec["capabilities"] == ["rust", "review"]
    assert rec["is_online"] is True
    assert RFC3339.match(rec["last_heartbeat"])
    assert RFC3339.match(rec["created_at"]) and RFC3339.match(rec["updated_at"])
    assert sorted(rec["performance_metrics"]) == sorted(METRICS)
    assert all(rec["performance_metrics"][k] == 0 for k in METRICS)
    assert rec["transition_count"] == 1
    assert "status_reason" not in rec


def test_get_returns_the_record_and_304_on_current_etag(srv):
    aid = new_id()
    _, h, created = srv.json("PUT", f"/v1/agents/{aid}", agent_body(status="Busy"))
    st, h2, rec = srv.json("GET", f"/v1/agents/{aid}")
    assert st == 200
    assert rec == created
    assert h2.get("ETag") == h.get("ETag")
    r = srv.request("GET", f"/v1/agents/{aid}", headers={"If-None-Match": h["ETag"]})
    assert r.status == 304 and r.body == b""


def test_update_200_keeps_created_at_and_bumps_version(srv):
    aid = new_id()
    _, _, a = srv.json("PUT", f"/v1/agents/{aid}", agent_body())
    st, h, b = srv.json("PUT", f"/v1/agents/{aid}", dict(a, name="renamed"))  # PUT back a read
    assert st == 200, b
    assert b["name"] == "renamed"
    assert b["created_at"] == a["created_at"]
    assert b["version"] > a["version"] and etag_version(h) == b["version"]
    assert b["transition_count"] == 1


def test_if_match_and_if_none_match(srv):
    aid = new_id()
    _, h, a = srv.json("PUT", f"/v1/agents/{aid}", agent_body(), headers={"If-None-Match": "*"})
    st, _, err = srv.json("PUT", f"/v1/agents/{aid}", agent_body(),
                          headers={"If-None-Match": "*"})
    assert_error(st, err, 412, "precondition_failed")
    st, _, err = srv.json("PUT", f"/v1/agents/{aid}", agent_body(status="Busy"),
                          headers={"If-Match": f'"{a["version"] + 1000}"'})
    assert_error(st, err, 412, "precondition_failed")
    assert srv.json("GET", f"/v1/agents/{aid}")[2]["status"] == "Idle"
    st, _, b = srv.json("PUT", f"/v1/agents/{aid}", agent_body(status="Busy"),
                        headers={"If-Match": h["ETag"]})
    assert st == 200 and b["status"] == "Busy"
    st, _, err = srv.json("DELETE", f"/v1/agents/{aid}", headers={"If-Match": h["ETag"]})
    assert_error(st, err, 412)
    st, _, err = srv.json("PUT", f"/v1/agents/{aid}", agent_body(),
                          headers={"If-Match": "not-a-tag"})
    assert_error(st, err, 400, "bad_header")


def test_delete_204_then_404(srv):
    aid = new_id()
    srv.json("PUT", f"/v1/agents/{aid}", agent_body())
    r = srv.request("DELETE", f"/v1/agents/{aid}")
    assert r.status == 204 and r.body == b""
    st, _, err = srv.json("GET", f"/v1/agents/{aid}")
    assert_error(st, err, 404, "not_found", aid)
    st, _, err = srv.json("DELETE", f"/v1/agents/{aid}")
    assert_error(st, err, 404)
    st, _, err = srv.json("GET", f"/v1/agents/{aid}/transitions")
    assert_error(st, err, 404)
    # If-None-Match: * on a DELETE is evaluated (RFC 9110): absent is 404 as without it
    st, _, err = srv.json("DELETE", f"/v1/agents/{aid}", headers={"If-None-Match": "*"})
    assert_error(st, err, 404, "not_found")


@pytest.mark.parametrize("patch,field", [
    ({"name": ""}, "name"),
    ({"name": None}, "name"),
    ({"agent_type": 5}, "agent_type"),
    ({"status": "idle"}, "status"),
    ({"capabilities": "rust"}, "capabilities"),
    ({"capabilities": ["rust", "has space"]}, "capabilities[1]"),
    ({"capabilities": ["rust", "rust"]}, "capabilities[1]"),
    ({"current_task_id": 7}, "current_task_id"),
    ({"last_heartbeat": "yesterday"}, "last_heartbeat"),
    ({"is_online": "yes"}, "is_online"),
    ({"performance_metrics": {"success_rate": 1.5}}, "performance_metrics.success_rate"),
    ({"performance_metrics": {"tasks_completed": -1}}, "performance_metrics.tasks_completed"),
    ({"performance_metrics": {"collaboration_score": "high"}},
     "performance_metrics.collaboration_score"),
    ({"performance_metrics": {"bogus": 1}}, "performance_metrics.bogus"),
    ({"status_reason": 3}, "status_reason"),
    ({"id": "someone-else"}, "id"),
    ({"colour": "red"}, "colour"),
])
def test_put_validation_names_the_field_and_changes_nothing(srv, patch, field):
    aid = new_id()
    body = agent_body()
    body.update(patch)
    if patch.get("name", 1) is None:
        del body["name"]
    st, _, err = srv.json("PUT", f"/v1/agents/{aid}", body)
    assert_error(st, err, 400, "invalid_field", f"'{field}'")
    assert srv.json("GET", f"/v1/agents/{aid}")[0] == 404


def test_bad_json_bad_id_and_unknown_parameters(srv):
    r = srv.request("PUT", f"/v1/agents/{new_id()}", body="{nope")
    assert r.status == 400 and r.json()["error"]["code"] == "bad_json"
    st, _, err = srv.json("PUT", "/v1/agents/bad%20id", agent_body())
    assert_error(st, err, 400, "invalid_field")
    st, _, err = srv.json("GET", f"/v1/agents/{'x' * 129}")
    assert_error(st, err, 400)
    st, _, err = srv.json("GET", "/v1/agents?colour=red")
    assert_error(st, err, 400, "invalid_field", "'colour'")
    st, _, err = srv.json("GET", "/v1/agents?status=Sleeping")
    assert_error(st, err, 400, "invalid_field", "'status'")
    st, _, err = srv.json("GET", "/v1/agents?limit=0")
    assert_error(st, err, 400, "invalid_field", "'limit'")
    st, _, err = srv.json("GET", "/v1/agents/stats?x=1")
    assert_error(st, err, 400, "invalid_field", "'x'")


def test_methods_and_options(srv):
    aid = new_id()
    cases = [("POST", f"/v1/agents/{aid}", "GET, PUT, DELETE, PATCH, OPTIONS"),
             ("DELETE", "/v1/agents", "GET, OPTIONS"),
             ("PUT", "/v1/agents/stats", "GET, OPTIONS"),
             ("GET", f"/v1/agents/{aid}/heartbeat", "POST, OPTIONS"),
             ("POST", f"/v1/agents/{aid}/transitions", "GET, OPTIONS"),
             ("DELETE", "/v1/system/metrics", "GET, PUT, OPTIONS"),
             ("POST", "/v1/configurations/c1", "GET, PUT, DELETE, OPTIONS")]
    for method, path, allow in cases:
        st, h, err = srv.json(method, path)
        assert_error(st, err, 405, "method_not_allowed")
        assert h.get("Allow") == allow, (method, path, h.get("Allow"))
        r = srv.request("OPTIONS", path)
        assert r.status == 204 and r.headers.get("Allow") == allow
    for path in (f"/v1/agents/{aid}/nothing", "/v1/system", "/v1/system/other",
                 "/v1/configurations", "/v1/agentsx"):
        st, _, err = srv.json("GET", path)
        assert_error(st, err, 404, "not_found")


# ---- transitions ----

def test_transitions_recorded_on_status_changes_only(srv):
    aid = new_id()
    srv.json("PUT", f"/v1/agents/{aid}", agent_body())
    srv.json("PUT", f"/v1/agents/{aid}", agent_body(name="same status"))
    st, _, rec = srv.json("PUT", f"/v1/agents/{aid}",
                          agent_body(status="Busy", status_reason="picked up task t1"))
    assert st == 200 and rec["transition_count"] == 2 and "status_reason" not in rec
    srv.json("PUT", f"/v1/agents/{aid}", agent_body(status="Busy", status_reason="ignored"))
    srv.json("POST", f"/v1/agents/{aid}/heartbeat")
    st, _, page = srv.json("GET", f"/v1/agents/{aid}/transitions")
    assert st == 200, page
    assert page["next_cursor"] is None
    got = [(t["from_status"], t["to_status"], t["reason"]) for t in page["items"]]
    assert got == [(None, "Idle", None), ("Idle", "Busy", "picked up task t1")]
    assert [t["seq"] for t in page["items"]] == [1, 2]
    assert all(RFC3339.match(t["timestamp"]) for t in page["items"])


def test_transitions_paginate(srv):
    aid = new_id()
    srv.json("PUT", f"/v1/agents/{aid}", agent_body())
    for s in ["Busy", "Working", "Blocked", "Collaborating", "Offline", "Failed", "Idle"]:
        st, _, _ = srv.json("PUT", f"/v1/agents/{aid}", agent_body(status=s))
        assert st == 200
    items, pages = page_all(srv, f"/v1/agents/{aid}/transitions", 3)
    assert pages == 3
    assert [t["seq"] for t in items] == list(range(1, 9))
    assert [t["to_status"] for t in items][-2:] == ["Failed", "Idle"]
    st, _, err = srv.json("GET", f"/v1/agents/{aid}/transitions?cursor=abc")
    assert_error(st, err, 400, "invalid_field", "'cursor'")
    st, _, err = srv.json("GET", f"/v1/agents/{aid}/transitions?status=Idle")
    assert_error(st, err, 400, "invalid_field", "'status'")


# ---- heartbeats ----

def test_heartbeat_sets_online_and_optional_fields(srv):
    aid = new_id()
    srv.json("PUT", f"/v1/agents/{aid}",
             agent_body(last_heartbeat="2020-01-01T00:00:00Z"))
    st, _, rec = srv.json("GET", f"/v1/agents/{aid}")
    assert rec["is_online"] is False, "a heartbeat years old must read offline"
    st, h, hb = srv.json("POST", f"/v1/agents/{aid}/heartbeat")
    assert st == 200, hb
    assert hb["is_online"] is True and hb["last_heartbeat"] > "2020-01-02"
    assert etag_version(h) == hb["version"] > rec["version"]
    st, _, hb = srv.json("POST", f"/v1/agents/{aid}/heartbeat",
                         {"status": "Working", "current_task_id": "task-42",
                          "status_reason": "started"})
    assert st == 200, hb
    assert hb["status"] == "Working" and hb["current_task_id"] == "task-42"
    _, _, page = srv.json("GET", f"/v1/agents/{aid}/transitions")
    assert page["items"][-1]["to_status"] == "Working"
    assert page["items"][-1]["reason"] == "started"
    st, _, hb = srv.json("POST", f"/v1/agents/{aid}/heartbeat", {"current_task_id": None})
    assert hb["current_task_id"] is None and hb["status"] == "Working"
    # an explicit is_online=false is offline until the next heartbeat
    _, _, off = srv.json("PUT", f"/v1/agents/{aid}", dict(hb, is_online=False))
    assert off["is_online"] is False
    assert srv.json("POST", f"/v1/agents/{aid}/heartbeat")[2]["is_online"] is True


def test_heartbeat_errors(srv):
    st, _, err = srv.json("POST", f"/v1/agents/{new_id()}/heartbeat")
    assert_error(st, err, 404, "not_found")
    aid = new_id()
    srv.json("PUT", f"/v1/agents/{aid}", agent_body())
    st, _, err = srv.json("POST", f"/v1/agents/{aid}/heartbeat", {"status": "Asleep"})
    assert_error(st, err, 400, "invalid_field", "'status'")
    st, _, err = srv.json("POST", f"/v1/agents/{aid}/heartbeat", {"name": "x"})
    assert_error(st, err, 400, "invalid_field", "'name'")
    r = srv.request("POST", f"/v1/agents/{aid}/heartbeat", body="[1")
    assert r.status == 400
    st, _, err = srv.json("POST", f"/v1/agents/{aid}/heartbeat", headers={"If-Match": '"999999"'})
    assert_error(st, err, 412)


def test_heartbeat_timeout_from_config(daemons):
    d = daemons(overrides=["ai_service.agent_management.heartbeat_timeout_seconds=1"]).start()
    aid = new_id()
    st, _, rec = d.json("PUT", f"/v1/agents/{aid}", agent_body())
    assert st == 201 and rec["is_online"] is True
    assert d.json("GET", "/v1/agents/stats")[2]["online_agents"] == 1
    time.sleep(1.6)
    assert d.json("GET", f"/v1/agents/{aid}")[2]["is_online"] is False
    _, _, stats = d.json("GET", "/v1/agents/stats")
    assert stats["online_agents"] == 0 and stats["total_agents"] == 1
    assert stats["heartbeat_timeout_seconds"] == 1
    _, _, page = d.json("GET", "/v1/agents")
    assert page["items"][0]["is_online"] is False
    assert d.json("POST", f"/v1/agents/{aid}/heartbeat")[2]["is_online"] is True
    assert d.json("GET", "/v1/agents/stats")[2]["online_agents"] == 1


# ---- lists ----

def test_list_filters_by_status_and_capability(srv):
    cap = f"cap{uuid.uuid4().hex[:8]}"
    other = f"cap{uuid.uuid4().hex[:8]}"
    ids = [new_id("l") for _ in range(4)]
    srv.json("PUT", f"/v1/agents/{ids[0]}", agent_body(capabilities=[cap]))
    srv.json("PUT", f"/v1/agents/{ids[1]}", agent_body(status="Blocked", capabilities=[cap]))
    srv.json("PUT", f"/v1/agents/{ids[2]}", agent_body(status="Blocked",
                                                       capabilities=[cap, other]))
    srv.json("PUT", f"/v1/agents/{ids[3]}", agent_body(capabilities=[other]))

    def listed(query):
        items, _ = page_all(srv, f"/v1/agents?{query}", 1000)
        return sorted(a["id"] for a in items)

    assert listed(f"capability={cap}") == sorted(ids[:3])
    assert listed(f"capability={other}") == sorted(ids[2:])
    assert listed(f"status=Blocked&capability={cap}") == sorted(ids[1:3])
    blocked = listed("status=Blocked")
    assert ids[1] in blocked and ids[2] in blocked and ids[0] not in blocked
    # changes move agents between index entries
    srv.json("PUT", f"/v1/agents/{ids[1]}", agent_body(status="Idle", capabilities=[other]))
    srv.json("POST", f"/v1/agents/{ids[0]}/heartbeat", {"status": "Blocked"})
    assert listed(f"capability={cap}") == sorted([ids[0], ids[2]])
    assert listed(f"capability={other}") == sorted([ids[1], ids[2], ids[3]])
    assert listed(f"status=Blocked&capability={cap}") == sorted([ids[0], ids[2]])
    srv.request("DELETE", f"/v1/agents/{ids[2]}")
    assert listed(f"capability={cap}") == [ids[0]]
    assert ids[2] not in listed("status=Blocked")
    _, _, page = srv.json("GET", f"/v1/agents?capability={cap}")
    item = page["items"][0]
    assert item["id"] == ids[0] and isinstance(item["version"], int)
    assert isinstance(item["is_online"], bool) and "created_at" in item


def test_list_paginates(srv):
    cap = f"pg{uuid.uuid4().hex[:8]}"
    ids = sorted(new_id("p") for _ in range(7))
    for i, aid in enumerate(ids):
        srv.json("PUT", f"/v1/agents/{aid}",
                 agent_body(capabilities=[cap], status="Busy" if i % 2 else "Idle"))
    items, pages = page_all(srv, f"/v1/agents?capability={cap}", 3)
    assert [a["id"] for a in items] == ids and pages == 3
    items, pages = page_all(srv, f"/v1/agents?status=Busy&capability={cap}", 2)
    assert [a["id"] for a in items] == ids[1::2] and pages == 2
    everything, _ = page_all(srv, "/v1/agents", 5)
    got = [a["id"] for a in everything]
    assert got == sorted(got) and set(ids) <= set(got)


# ---- stats ----

def test_stats_aggregate_the_stored_agents(fresh):
    d = fresh
    _, _, s = d.json("GET", "/v1/agents/stats")
    assert s["total_agents"] == 0 and s["online_agents"] == 0
    assert s["by_status"] == {k: 0 for k in STATUSES}
    d.json("PUT", "/v1/agents/a", agent_body(performance_metrics={
        "tasks_completed": 10, "tasks_failed": 2, "success_rate": 0.8,
        "collaboration_score": 0.5, "avg_response_time_ms": 100}))
    d.json("PUT", "/v1/agents/b", agent_body(status="Busy", performance_metrics={
        "tasks_completed": 5, "success_rate": 0.6, "collaboration_score": 0.25,
        "avg_response_time_ms": 300}))
    d.json("PUT", "/v1/agents/c", agent_body(status="Busy", is_online=False))
    st, _, s = d.json("GET", "/v1/agents/stats")
    assert st == 200, s
    assert s["total_agents"] == 3 and s["online_agents"] == 2
    assert s["by_status"]["Idle"] == 1 and s["by_status"]["Busy"] == 2
    assert s["tasks_completed"] == 15 and s["tasks_failed"] == 2
    assert s["avg_success_rate"] == pytest.approx(1.4 / 3)
    assert s["avg_collaboration_score"] == pytest.approx(0.75 / 3)
    assert s["avg_response_time_ms"] == pytest.approx(400 / 3)
    assert RFC3339.match(s["timestamp"])
    d.json("PUT", "/v1/agents/a", agent_body(status="Failed", performance_metrics={
        "tasks_completed": 11, "tasks_failed": 3, "success_rate": 1}))
    d.request("DELETE", "/v1/agents/b")
    _, _, s = d.json("GET", "/v1/agents/stats")
    assert s["total_agents"] == 2 and s["online_agents"] == 1
    assert s["by_status"]["Busy"] == 1 and s["by_status"]["Failed"] == 1
    assert s["by_status"]["Idle"] == 0
    assert s["tasks_completed"] == 11 and s["tasks_failed"] == 3
    assert s["avg_success_rate"] == pytest.approx(0.5)
    for aid in ("a", "c"):
        assert d.request("DELETE", f"/v1/agents/{aid}").status == 204
    _, _, s = d.json("GET", "/v1/agents/stats")
    assert s["total_agents"] == 0 and s["tasks_completed"] == 0
    assert s["by_status"] == {k: 0 for k in STATUSES}


def test_stats_stay_consistent_under_concurrent_writers(fresh):
    import threading
    d = fresh
    n_threads, per = 4, 10
    errors = []

    def worker(t):
        conn = d.connection()
        try:
            for i in range(per):
                aid = f"w{t}-{i}"
                st, _, body = d.json("PUT", f"/v1/agents/{aid}",
                                     agent_body(performance_metrics={"tasks_completed": 1}),
                                     conn=conn)
                if st != 201:
                    errors.append((st, body))
                st, _, body = d.json("POST", f"/v1/agents/{aid}/heartbeat",
                                     {"status": "Busy"}, conn=conn)
                if st != 200:
                    errors.append((st, body))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    _, _, s = d.json("GET", "/v1/agents/stats")
    total = n_threads * per
    assert s["total_agents"] == total and s["online_agents"] == total
    assert s["by_status"]["Busy"] == total and s["by_status"]["Idle"] == 0
    assert s["tasks_completed"] == total


# ---- system metrics ----

def test_system_metrics_put_get(fresh):
    d = fresh
    st, _, err = d.json("GET", "/v1/system/metrics")
    assert_error(st, err, 404, "not_found")
    st, h, rec = d.json("PUT", "/v1/system/metrics", system_body(custom={"queue_depth": 4}))
    assert st == 201, rec
    assert etag_version(h) == rec["version"]
    assert rec["cpu_usage_percent"] == 12.5 and rec["active_agents"] == 3
    assert rec["custom"] == {"queue_depth": 4}
    assert RFC3339.match(rec["timestamp"]) and RFC3339.match(rec["created_at"])
    st, h2, got = d.json("GET", "/v1/system/metrics")
    assert st == 200 and got == rec and h2["ETag"] == h["ETag"]
    st, _, err = d.json("PUT", "/v1/system/metrics", system_body(),
                        headers={"If-Match": f'"{rec["version"] + 100}"'})
    assert_error(st, err, 412)
    st, _, upd = d.json("PUT", "/v1/system/metrics", system_body(cpu_usage_percent=99),
                        headers={"If-Match": h["ETag"]})
    assert st == 200 and upd["cpu_usage_percent"] == 99 and upd["custom"] == {}
    assert upd["created_at"] == rec["created_at"]


@pytest.mark.parametrize("patch,field", [
    ({"cpu_usage_percent": 100.5}, "cpu_usage_percent"),
    ({"memory_usage_percent": -1}, "memory_usage_percent"),
    ({"active_agents": 2.5}, "active_agents"),
    ({"total_sessions": -1}, "total_sessions"),
    ({"messages_per_second": "many"}, "messages_per_second"),
    ({"error_rate": 1.5}, "error_rate"),
    ({"error_rate": None}, "error_rate"),
    ({"timestamp": "noon"}, "timestamp"),
    ({"custom": {"k": "v"}}, "custom.k"),
    ({"custom": [1]}, "custom"),
    ({"gpu": 3}, "gpu"),
])
def test_system_metrics_validation(srv, patch, field):
    body = system_body(**patch)
    st, _, err = srv.json("PUT", "/v1/system/metrics", body)
    assert_error(st, err, 400, "invalid_field", f"'{field}'")


# ---- configurations ----

def test_configuration_versions_and_history(srv):
    name = new_id("cfg")
    st, h, v1 = srv.json("PUT", f"/v1/configurations/{name}",
                         {"config_data": {"replicas": 1}, "description": "first"})
    assert st == 201, v1
    assert h.get("Location") == f"/v1/configurations/{name}"
    assert v1["version"] == 1 and etag_version(h) == 1
    assert v1["name"] == name and v1["config_data"] == {"replicas": 1}
    assert v1["description"] == "first"
    st, h, v2 = srv.json("PUT", f"/v1/configurations/{name}",
                         {"config_data": {"replicas": 2, "nested": {"a": [1, 2]}}})
    assert st == 200 and v2["version"] == 2 and etag_version(h) == 2
    assert v2["description"] is None and v2["created_at"] == v1["created_at"]
    st, h, latest = srv.json("GET", f"/v1/configurations/{name}")
    assert st == 200 and latest == v2 and etag_version(h) == 2
    st, h, old = srv.json("GET", f"/v1/configurations/{name}?version=1")
    assert st == 200 and old == v1 and etag_version(h) == 1
    st, _, err = srv.json("GET", f"/v1/configurations/{name}?version=3")
    assert_error(st, err, 404, "not_found", "version 3")
    st, _, err = srv.json("GET", f"/v1/configurations/{name}?version=x")
    assert_error(st, err, 400, "invalid_field", "'version'")
    st, _, err = srv.json("GET", f"/v1/configurations/{name}?v=1")
    assert_error(st, err, 400, "invalid_field", "'v'")
    st, _, err = srv.json("GET", f"/v1/configurations/{new_id('none')}")
    assert_error(st, err, 404, "not_found")
    for i in range(3, 6):
        assert srv.json("PUT", f"/v1/configurations/{name}", {"config_data": {"i": i}})[0] == 200
    items, pages = page_all(srv, f"/v1/configurations/{name}/versions", 2)
    assert [c["version"] for c in items] == [1, 2, 3, 4, 5] and pages == 3


def test_configuration_if_match(srv):
    name = new_id("cfg")
    body = {"config_data": {"k": "v"}}
    assert srv.json("PUT", f"/v1/configurations/{name}", body,
                    headers={"If-Match": '"1"'})[0] == 412
    assert srv.json("PUT", f"/v1/configurations/{name}", body,
                    headers={"If-None-Match": "*"})[0] == 201
    st, _, err = srv.json("PUT", f"/v1/configurations/{name}", body,
                          headers={"If-None-Match": "*"})
    assert_error(st, err, 412, "precondition_failed")
    st, _, rec = srv.json("PUT", f"/v1/configurations/{name}", body, headers={"If-Match": '"1"'})
    assert st == 200 and rec["version"] == 2
    st, _, err = srv.json("PUT", f"/v1/configurations/{name}", body, headers={"If-Match": '"1"'})
    assert_error(st, err, 412)
    assert srv.json("GET", f"/v1/configurations/{name}")[2]["version"] == 2


@pytest.mark.parametrize("body,field", [
    ({}, "config_data"),
    ({"config_data": [1, 2]}, "config_data"),
    ({"config_data": {}, "description": 5}, "description"),
    ({"config_data": {}, "name": "another"}, "name"),
    ({"config_data": {}, "extra": 1}, "extra"),
])
def test_configuration_validation(srv, body, field):
    name = new_id("cfg")
    st, _, err = srv.json("PUT", f"/v1/configurations/{name}", body)
    assert_error(st, err, 400, "invalid_field", f"'{field}'")
    assert srv.json("GET", f"/v1/configurations/{name}")[0] == 404


# ---- durability ----

def test_sqlite_state_survives_a_restart(daemons, tmp_path):
    if not plugin_available("sqlite"):
        pytest.skip("storage plugin 'sqlite' not built")
    conf = sqlite_config(tmp_path / "restart.db")
    d = daemons(config=conf).start()
    d.json("PUT", "/v1/agents/keep", agent_body(status="Busy", status_reason="r"))
    d.json("PUT", "/v1/configurations/conf", {"config_data": {"a": 1}})
    d.json("PUT", "/v1/configurations/conf", {"config_data": {"a": 2}})
    d.json("PUT", "/v1/system/metrics", system_body())
    _, _, before = d.json("GET", "/v1/agents/keep")
    assert d.stop() == 0
    d.start()
    assert d.json("GET", "/v1/agents/keep")[2] == before
    _, _, page = d.json("GET", "/v1/agents/keep/transitions")
    assert [t["to_status"] for t in page["items"]] == ["Busy"]
    assert page["items"][0]["reason"] == "r"
    assert d.json("GET", "/v1/configurations/conf")[2]["version"] == 2
    assert d.json("GET", "/v1/configurations/conf?version=1")[2]["config_data"] == {"a": 1}
    _, _, s = d.json("GET", "/v1/agents/stats")
    assert s["total_agents"] == 1 and s["by_status"]["Busy"] == 1
    assert d.json("GET", "/v1/system/metrics")[0] == 200
