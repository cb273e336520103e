"""
Issue 18 items 9 and 10: a replace keeps the record's history, PATCH
(RFC 7396 merge patch), reason phrases, floats that round-trip as written,
503 answers that do not name the backend's address, and the redis
plugin's password_env.
"""

import http.client
import json
import time

from conftest import wait_until

MERGE = {"Content-Type": "application/merge-patch+json"}


def put_session(d, sid, body, headers=None):
    status, h, rec = d.json("PUT", f"/v1/sessions/{sid}", body, headers)
    assert status in (200, 201), (status, rec)
    return h["ETag"], rec


def test_replace_keeps_history_fields(daemons):
    # one worker: access counts are per worker until they are flushed
    daemon = daemons(workers=1).start()
    etag, first = put_session(daemon, "hist", {"topic": "t", "participants": ["a"],
                                               "started_at": "2026-01-02T03:04:05Z"})
    for _ in range(3):
        assert daemon.request("GET", "/v1/sessions/hist").status == 200
    status, h, rec = daemon.json("GET", "/v1/sessions/hist")
    assert rec["access_count"] >= 3, rec
    # the README's replace: the client sends only what it changes
    status, h, new = daemon.json("PUT", "/v1/sessions/hist", {"topic": "t2", "participants": ["a"]},
                                 {"If-Match": h["ETag"]})
    assert status == 200, new
    assert new["topic"] == "t2"
    assert new["started_at"] == "2026-01-02T03:04:05.000Z", new
    assert new["created_at"] == first["created_at"], (first, new)
    assert new["access_count"] >= rec["access_count"], (rec, new)  # not reset to 0
    assert new["last_accessed"] is not None and new["last_accessed"] >= rec["last_accessed"], new
    # started_at sent: it is what the client said
    status, _, new = daemon.json("PUT", "/v1/sessions/hist",
                                 {"topic": "t2", "started_at": "2026-02-03T00:00:00Z"})
    assert status == 200 and new["started_at"] == "2026-02-03T00:00:00.000Z", new
    # a create without started_at still takes now
    status, _, created = daemon.json("PUT", "/v1/sessions/fresh", {"topic": "t"})
    assert status == 201 and created["started_at"].startswith(time.strftime("%Y-", time.gmtime()))


def test_patch_merge_semantics(daemon):
    etag, rec = put_session(daemon, "p1", {
        "topic": "t", "participants": ["a", "b"], "ended_at": "2026-03-01T00:00:00Z",
        "started_at": "2026-01-01T00:00:00Z", "decisions": [{"x": 1}]})
    patch = {"topic": "patched", "ended_at": None, "status": "Paused"}
    status, h, new = daemon.json("PATCH", "/v1/sessions/p1", json.dumps(patch),
                                 dict(MERGE, **{"If-Match": etag}))
    assert status == 200, new
    assert new["topic"] == "patched"
    assert new["status"] == "Paused"
    assert new["ended_at"] is None  # null removed the member; the default is null
    assert new["participants"] == ["a", "b"]  # not in the patch: unchanged
    assert new["decisions"] == [{"x": 1}]
    assert new["started_at"] == rec["started_at"]
    assert new["created_at"] == rec["created_at"]
    assert new["version"] > rec["version"]
    assert h["ETag"] != etag
    status, _, got = daemon.json("GET", "/v1/sessions/p1")
    assert got["topic"] == "patched" and got["status"] == "Paused"
    # without If-Match it applies to the current version
    status, _, new = daemon.json("PATCH", "/v1/sessions/p1", '{"participants":["c"]}', MERGE)
    assert status == 200 and new["participants"] == ["c"], new
    # the merged result is validated like a PUT body
    status, _, err = daemon.json("PATCH", "/v1/sessions/p1", '{"status":"Bogus"}', MERGE)
    assert status == 400 and "status" in err["error"]["message"], err
    status, _, err = daemon.json("PATCH", "/v1/sessions/p1", '{"topic":null}', MERGE)
    assert status == 400 and "topic" in err["error"]["message"], err
    status, _, err = daemon.json("PATCH", "/v1/sessions/p1", '[1]', MERGE)
    assert status == 400, err
    status, _, got2 = daemon.json("GET", "/v1/sessions/p1")
    assert got2["version"] == new["version"], "a refused PATCH changed the session"


def test_patch_errors(daemon):
    etag, rec = put_session(daemon, "p2", {"topic": "t"})
    # wrong content type: 415, nothing changes
    for ct in ("application/json", "text/plain", None):
        headers = {"Content-Type": ct} if ct else {}
        r = daemon.request("PATCH", "/v1/sessions/p2", b'{"topic":"x"}', headers)
        assert r.status == 415, (ct, r.status, r.body)
        assert r.json()["error"]["code"] == "unsupported_media_type"
    # a parameter on the right media type is fine
    status, _, new = daemon.json("PATCH", "/v1/sessions/p2", '{"topic":"y"}',
                                 {"Content-Type": "application/merge-patch+json; charset=utf-8"})
    assert status == 200 and new["topic"] == "y"
    # If-Match mismatch: 412, nothing changes
    status, _, err = daemon.json("PATCH", "/v1/sessions/p2", '{"topic":"z"}',
                                 dict(MERGE, **{"If-Match": etag}))
    assert status == 412, err
    assert err["error"]["code"] == "precondition_failed"
    status, _, got = daemon.json("GET", "/v1/sessions/p2")
    assert got["topic"] == "y"
    # absent session: 404
    status, _, err = daemon.json("PATCH", "/v1/sessions/nope", '{"topic":"z"}', MERGE)
    assert status == 404, err
    # PATCH is announced where it is allowed
    r = daemon.request("OPTIONS", "/v1/sessions/p2")
    assert "PATCH" in r.headers["Allow"], r.headers["Allow"]
    r = daemon.request("PATCH", "/v1/sessions", b"{}", MERGE)
    assert r.status == 405 and "PATCH" not in r.headers["Allow"]


def test_reason_phrases(daemon):
    etag, _ = put_session(daemon, "rp", {"topic": "t"})
    # http.client keeps the reason phrase of the status line
    c = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        for method, path, headers, body, want in (
                ("GET", "/v1/sessions/rp", {"If-None-Match": etag}, None, (304, "Not Modified")),
                ("GET", "/v1/sessions/rp", {}, None, (200, "OK")),
                ("GET", "/v1/nothing-here", {}, None, (404, "Not Found")),
                ("PATCH", "/v1/sessions/rp", {"Content-Type": "text/plain"}, b"{}",
                 (415, "Unsupported Media Type")),
                ("PATCH", "/v1/sessions/rp", {"Content-Type": "application/merge-patch+json",
                                              "If-Match": '"999999"'}, b"{}",
                 (412, "Precondition Failed")),
                ("DELETE", "/v1/sessions/rp", {}, None, (204, "No Content"))):
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            r.read()
            assert (r.status, r.reason) == want, (method, path, r.status, r.reason)
    finally:
        c.close()


def test_floats_round_trip(daemon):
    # 0.1 + 0.2 needs all 17 digits: the others still get their own shortest form
    body = {"id": "f1", "topic": "t", "decisions": [{"score": 3.2, "w": 0.1, "big": 1e300,
                                                     "third": 1 / 3, "sum": 0.1 + 0.2}]}
    r = daemon.request("PUT", "/v1/sessions/f1", body)
    assert r.status == 201, r.body
    for text in (b'"score":3.2,', b'"w":0.1,', b'"big":1e300,', b'"third":0.3333333333333333,',
                 b'"sum":0.30000000000000004}'):
        assert text in r.body, (text, r.body)
    got = daemon.request("GET", "/v1/sessions/f1")
    assert b'"score":3.2,' in got.body, got.body
    d = got.json()["decisions"][0]
    # every value reads back as the same double
    assert d == {"score": 3.2, "w": 0.1, "big": 1e300, "third": 1 / 3, "sum": 0.1 + 0.2}, d
    # a document whose reals all have short forms is written short
    r = daemon.request("PUT", "/v1/sessions/f2", {"topic": "t", "decisions": [{"score": 3.2}]})
    assert b"3.2000000000000002" not in r.body and b'"score":3.2}' in r.body, r.body
    r = daemon.request("GET", "/v1/sessions/f2")
    assert b'"score":3.2}' in r.body, r.body


def redis_config(port, extra):
    return ('persistence: { backend = "redis"; '
            f'redis = {{ host = "127.0.0.1"; port = {port}; timeout_ms = 2000; {extra} }}; }};\n')


def test_redis_password_env(daemons, redis, monkeypatch):
    proc, port = redis
    monkeypatch.setenv("RHEMA_TEST_REDIS_PASSWORD", "s3cret pass")
    d = daemons(config=redis_config(port, 'password_env = "RHEMA_TEST_REDIS_PASSWORD";'))
    d.start()
    status, _, rec = d.json("PUT", "/v1/sessions/env1", {"topic": "t"})
    assert status == 201, rec
    d.stop()
    # wrong password through the variable: refused at startup
    monkeypatch.setenv("RHEMA_TEST_REDIS_PASSWORD", "wrong")
    d2 = daemons(name="wrong", config=redis_config(port, 'password_env = "RHEMA_TEST_REDIS_PASSWORD";'))
    d2.spawn()
    assert d2.wait(15) not in (None, 0), d2.log()
    # the variable unset: refused, naming it
    monkeypatch.delenv("RHEMA_TEST_REDIS_PASSWORD")
    d3 = daemons(name="unset", config=redis_config(port, 'password_env = "RHEMA_TEST_REDIS_PASSWORD";'))
    d3.spawn()
    assert d3.wait(15) not in (None, 0), d3.log()
    assert "RHEMA_TEST_REDIS_PASSWORD" in d3.log() and "not set" in d3.log(), d3.log()
    # both set: refused
    monkeypatch.setenv("RHEMA_TEST_REDIS_PASSWORD", "s3cret pass")
    d4 = daemons(name="both", config=redis_config(
        port, 'password = "s3cret pass"; password_env = "RHEMA_TEST_REDIS_PASSWORD";'))
    d4.spawn()
    assert d4.wait(15) not in (None, 0), d4.log()
    assert "password_env" in d4.log(), d4.log()


def test_503_answer_hides_backend_address(daemons, redis, monkeypatch):
    """The backend goes away: 503 names no host or port; the log does."""
    proc, port = redis
    monkeypatch.setenv("RHEMA_TEST_REDIS_PASSWORD", "s3cret pass")
    d = daemons(config=redis_config(port, 'password_env = "RHEMA_TEST_REDIS_PASSWORD";'))
    d.start()
    assert d.request("PUT", "/v1/sessions/x", {"topic": "t"}).status == 201
    proc.kill()
    proc.wait(10)
    seen = set()
    for path in ("/v1/sessions/x", "/health/ready", "/health"):
        r = d.request("GET", path)
        seen.add(r.status)
        assert str(port).encode() not in r.body, (path, r.body)
        assert b"127.0.0.1" not in r.body, (path, r.body)
        if path != "/health":
            assert r.status == 503, (path, r.status, r.body)
    assert wait_until(lambda: str(port) in d.log(), 5) is True, d.log()


def test_plugins_answer_matches_the_doc(daemon):
    status, _, body = daemon.json("GET", "/v1/plugins")
    assert status == 200 and body["next_cursor"] is None
    kinds = set()
    for item in body["items"]:
        kinds.add(item["kind"])
        for k in ("name", "kind", "version", "description", "path", "abi"):
            assert isinstance(item[k], str), (k, item)
        if item["kind"] == "storage":
            assert isinstance(item["active"], bool) and isinstance(item["features"], list), item
            assert set(item["features"]) <= {"shared", "durable", "ttl", "leases", "sequenced"}, item
        else:
            assert "features" not in item and "active" not in item, item
    active = [i["name"] for i in body["items"] if i.get("active")]
    assert active == ["memory"], body
    assert len(kinds) > 1, "only one plugin kind loaded: the check above proves little"


def test_stats_and_alerts_as_documented(daemon):
    status, _, st = daemon.json("GET", "/v1/stats")
    assert status == 200, st
    assert {"version", "uptime_seconds", "workers", "storage", "group_commit",
            "performance"} <= set(st), st
    assert st["storage"]["backend"] == "memory" and st["storage"]["ok"] is True
    assert isinstance(st["storage"]["entries"], int) and isinstance(st["storage"]["bytes"], int)
    assert set(st["group_commit"]) == {"commits", "writes"}
    assert "enabled" in st["performance"]
    status, _, al = daemon.json("GET", "/v1/alerts")
    assert status == 200 and isinstance(al["active"], list) and isinstance(al["history"], list)


def test_agent_patch(daemon):
    body = {"name": "coder one", "agent_type": "coder", "capabilities": ["rust", "review"],
            "assigned_scope": "services/auth", "current_task_id": "t1"}
    status, h, rec = daemon.json("PUT", "/v1/agents/a1", body)
    assert status == 201, rec
    status, _, hb = daemon.json("POST", "/v1/agents/a1/heartbeat", {"status": "Busy"})
    assert status in (200, 201), hb
    status, h, before = daemon.json("GET", "/v1/agents/a1")
    patch = {"capabilities": ["go"], "current_task_id": None}
    status, h2, new = daemon.json("PATCH", "/v1/agents/a1", json.dumps(patch),
                                  dict(MERGE, **{"If-Match": h["ETag"]}))
    assert status == 200, new
    assert new["capabilities"] == ["go"]
    assert new.get("current_task_id") is None
    assert new["name"] == "coder one" and new["status"] == "Busy"
    # the record's history stays: created_at, the heartbeat, the transitions
    for k in ("created_at", "last_heartbeat", "is_online", "transition_count"):
        assert new[k] == before[k], (k, before, new)
    assert new["version"] > before["version"]
    # stale If-Match, wrong type, absent agent
    status, _, err = daemon.json("PATCH", "/v1/agents/a1", '{"name":"x"}',
                                 dict(MERGE, **{"If-Match": h["ETag"]}))
    assert status == 412, err
    r = daemon.request("PATCH", "/v1/agents/a1", b'{"name":"x"}')
    assert r.status == 415, r.body
    status, _, err = daemon.json("PATCH", "/v1/agents/zz", '{"name":"x"}', MERGE)
    assert status == 404, err
    status, _, got = daemon.json("GET", "/v1/agents/a1")
    assert got["name"] == "coder one" and got["version"] == new["version"]


def test_agent_replace_keeps_history(daemon):
    body = {"name": "n", "agent_type": "coder"}
    status, _, first = daemon.json("PUT", "/v1/agents/a2", body)
    assert status == 201, first
    daemon.json("POST", "/v1/agents/a2/heartbeat", {"status": "Busy"})
    status, h, before = daemon.json("GET", "/v1/agents/a2")
    status, _, new = daemon.json("PUT", "/v1/agents/a2", dict(body, status="Busy"),
                                 {"If-Match": h["ETag"]})
    assert status == 200, new
    for k in ("created_at", "last_heartbeat", "transition_count"):
        assert new[k] == before[k], (k, before, new)
