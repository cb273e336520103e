"""
Blocking queries on agents and services (issue 12, item 2: "resource reads
gain blocking queries too"), as on sessions (test_events.py's
test_blocking_query): GET /v1/agents/{id} and GET /v1/services/{service_id}
with ?index=VERSION&wait=.  At once when the version is already past index
or the resource is absent (404); otherwise on the resource's next event (a
write from another connection, its deletion: 404), or at the end of the
wait with the unchanged resource.  Bad index / wait: 400; wait capped by
coordination.max_wait_seconds; without the change feed, at once.

Every backend the machine offers (test_events.py's backend fixture):
memory, file and SQLite always, PostgreSQL and Redis when installed.
"""
import http.client
import json
import socket
import time

import pytest

from conftest import memory_config
from test_events import backend, feed  # noqa: F401  (the fixture, parametrized by backend)

AGENT = {"name": "coder", "agent_type": "coder", "capabilities": ["rust"]}


def etag(headers):
    return int(headers.get("ETag").strip('"'))


def put_agent(d, aid, status="Idle"):
    r = d.request("PUT", f"/v1/agents/{aid}", dict(AGENT, status=status))
    assert r.status in (200, 201), r.body
    return etag(r.headers)


def put_service(d, sid, port=9001):
    r = d.request("PUT", f"/v1/services/{sid}", {"name": "web", "address": f"127.0.0.1:{port}"})
    assert r.status in (200, 201), r.body
    return etag(r.headers)


KINDS = {
    "agent": ("/v1/agents/", lambda d, i, n=0: put_agent(d, i)),
    "service": ("/v1/services/", lambda d, i, n=0: put_service(d, i, 9001 + n)),
}


class Waiting:
    """A blocking query sent on its own connection; answer() reads the reply."""

    def __init__(self, d, path, timeout=30):
        self.conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=timeout)
        self.conn.request("GET", path)

    def answer(self):
        r = self.conn.getresponse()
        body = r.read()
        self.conn.close()
        return r.status, r.getheader("ETag"), json.loads(body) if body else None


def change(kind, d, rid):
    """A write that changes the resource: a new version."""
    if kind == "agent":
        return put_agent(d, rid, "Busy")
    return put_service(d, rid, 9100)


@pytest.mark.parametrize("kind", ["agent", "service"])
def test_blocking_query(daemons, backend, kind):  # noqa: F811
    d = daemons(config=backend()).start()
    base, put = KINDS[kind]
    v = put(d, "b1")
    # already past index: at once, with the resource and its ETag
    r = d.request("GET", f"{base}b1?index={v - 1}&wait=20s")
    assert r.status == 200 and etag(r.headers) == v, r.body
    # absent: 404 at once
    r = d.request("GET", f"{base}nobody?index=1&wait=20s")
    assert r.status == 404, r.body
    # waits; a write to another resource of the kind does not answer it; one to it does
    w = Waiting(d, f"{base}b1?index={v}&wait=20s")
    time.sleep(0.3)
    put(d, "other", 1)
    v2 = change(kind, d, "b1")
    status, tag, body = w.answer()
    assert status == 200 and int(tag.strip('"')) == v2 and v2 > v, (status, tag, body)
    assert body["version"] == v2
    # the end of the wait: the unchanged resource
    t0 = time.monotonic()
    r = d.request("GET", f"{base}b1?index={v2}&wait=1s")
    assert r.status == 200 and etag(r.headers) == v2, r.body
    assert time.monotonic() - t0 >= 0.9
    # deleted while waiting: 404
    w = Waiting(d, f"{base}b1?index={v2}&wait=20s")
    time.sleep(0.3)
    assert d.request("DELETE", f"{base}b1").status == 204
    status, _, body = w.answer()
    assert status == 404, body


@pytest.mark.parametrize("kind", ["agent", "service"])
def test_blocking_query_bad_input(daemons, kind):
    d = daemons(config=memory_config() + feed()).start()
    base, put = KINDS[kind]
    v = put(d, "b1")
    for q in ("index=x&wait=1s", "index=-1&wait=1s", "index=1.5", "index=",
              "index=123456789012345678901234", "wait=soon", "wait=1h", "wait=-1",
              f"index={v}&wait=", "index=1&nope=1", "nope=1"):
        r = d.request("GET", f"{base}b1?{q}")
        assert r.status == 400, (q, r.body)
        e = r.json()["error"]
        assert e["code"] == "invalid_field", (q, e)
        assert ("'index'" in e["message"] or "'wait'" in e["message"] or "nope" in e["message"]), e
    # nothing changed
    r = d.request("GET", f"{base}b1")
    assert r.status == 200 and etag(r.headers) == v


def test_wait_capped_by_max_wait_seconds(daemons):
    d = daemons(config=memory_config() + feed("max_wait_seconds = 1;")).start()
    v = put_agent(d, "cap")
    put_service(d, "cap")
    vs = etag(d.request("GET", "/v1/services/cap").headers)
    # wait=60s is cut to 1 s: both answer long before the client gives up (20 s)
    for path, ver in ((f"/v1/agents/cap?index={v}&wait=60s", v),
                      (f"/v1/services/cap?index={vs}&wait=60s", vs)):
        r = d.request("GET", path, timeout=20)
        assert r.status == 200 and etag(r.headers) == ver, r.body


def test_without_the_change_feed_answers_at_once(daemons):
    d = daemons(config=memory_config() + "coordination: { change_feed = false; };\n").start()
    v = put_agent(d, "nf")
    vs = put_service(d, "nf")
    # as a session's blocking query: the current state at once, never a wait of 60 s
    for path, ver in ((f"/v1/agents/nf?index={v}&wait=60s", v),
                      (f"/v1/services/nf?index={vs}&wait=60s", vs)):
        r = d.request("GET", path, timeout=20)
        assert r.status == 200 and etag(r.headers) == ver, r.body
    assert d.request("GET", "/v1/agents/gone?index=1&wait=60s", timeout=20).status == 404
    assert d.request("GET", "/v1/agents/nf?index=x&wait=1s").status == 400


@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
def test_agent_heartbeat_wakes_it(daemons, backend):  # noqa: F811
    """A heartbeat is an agent.updated event: it answers with the new version."""
    d = daemons(config=backend()).start()
    v = put_agent(d, "hb")
    w = Waiting(d, f"/v1/agents/hb?index={v}&wait=20s")
    time.sleep(0.3)
    r = d.request("POST", "/v1/agents/hb/heartbeat")
    assert r.status == 200, r.body
    status, tag, body = w.answer()
    assert status == 200 and int(tag.strip('"')) == etag(r.headers) > v, (status, tag)


@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
def test_service_health_change_wakes_it(daemons, backend):  # noqa: F811
    """A health change (service.health, written by the checks) answers a service's blocking
    query with the new health_status; the registration's version is unchanged by it."""
    d = daemons(config=backend(), overrides=["distributed.health_checking.interval_seconds=1",
                                             "distributed.health_checking.timeout_seconds=1"]
                ).start()
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(16)
    port = lsn.getsockname()[1]
    try:
        r = d.request("PUT", "/v1/services/hc-1",
                      {"name": "hc", "address": f"127.0.0.1:{port}",
                       "check": {"type": "tcp", "target": f"127.0.0.1:{port}",
                                 "failure_threshold": 1, "success_threshold": 1}})
        assert r.status == 201, r.body
        v = etag(r.headers)
        # Healthy, and the feed has read that event (else it would wake the query below)
        since, deadline, ups = 0, time.monotonic() + 20, []
        while not ups:
            assert time.monotonic() < deadline, "never Healthy"
            r = d.request("GET", f"/v1/events?since={since}&types=service.health&wait=5s",
                          timeout=20)
            items = r.json()["items"]
            ups = [e for e in items if e["id"] == "hc-1" and e["to"] == "Healthy"]
            since = items[-1]["revision"] if items else since
        w = Waiting(d, f"/v1/services/hc-1?index={v}&wait=60s", timeout=40)
        time.sleep(0.3)
    finally:
        lsn.close()
    # the check now fails: the waiting query answers with Unhealthy (without the wake it
    # would answer after 60 s, past the client's 40)
    status, tag, body = w.answer()
    assert status == 200 and int(tag.strip('"')) == v, (status, tag, body)
    assert body["health_status"] == "Unhealthy", body
