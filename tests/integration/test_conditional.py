"""
Conditional requests as RFC 9110 §13 says (issue 13 item 7), on every
resource with versions: sessions, agents, configurations, services,
consensus state and system metrics.  One implementation serves them all
(core/api/conditional.c), so each case runs against each resource:
entity-tag lists, weak comparison for If-None-Match, strong for If-Match,
a well-formed tag that names no version is 412 (not 400), "*" on both
headers, 304 on GET / HEAD, If-Match before If-None-Match, and two writes
racing with the same If-Match give one success and one 412.
"""

import itertools
import threading

import pytest

from conftest import Daemon, require_plugin, sqlite_config

_ids = itertools.count(1)


class Resource:
    """A kind of versioned resource: its path for an id, a body, what it supports."""

    def __init__(self, name, path, body, delete=True, singleton=False):
        self.name, self.path_of, self.body_of = name, path, body
        self.delete, self.singleton = delete, singleton

    def fresh(self):
        return self.path_of(f"c{next(_ids)}")

    def body(self, n=0):
        return self.body_of(n)


RESOURCES = [
    Resource("sessions", lambda i: f"/v1/sessions/{i}",
             lambda n: {"topic": f"topic {n}", "participants": ["alice", "bob"]}),
    Resource("agents", lambda i: f"/v1/agents/{i}",
             lambda n: {"name": f"agent {n}", "agent_type": "coder", "capabilities": ["c"],
                        "assigned_scope": "x"}),
    Resource("configurations", lambda i: f"/v1/configurations/{i}",
             lambda n: {"config_data": {"n": n}}),
    Resource("services", lambda i: f"/v1/services/{i}",
             lambda n: {"name": "web", "address": f"127.0.0.1:{9000 + n % 1000}"}),
    Resource("consensus", lambda i: f"/v1/consensus/{i}/state",
             lambda n: {"term": n + 1}, delete=False),
    Resource("system-metrics", lambda i: "/v1/system/metrics",
             lambda n: {"cpu_usage_percent": n % 100, "memory_usage_percent": 1,
                        "active_agents": 1, "total_sessions": 1, "messages_per_second": 1,
                        "error_rate": 0}, delete=False, singleton=True),
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("cond"))
    d.start()
    yield d
    try:
        rc = d.stop()
    finally:
        d.kill()
    assert rc == 0, d.log()[-3000:]  # a clean drain (and, under ASan, no leak)


@pytest.fixture(params=RESOURCES, ids=lambda r: r.name)
def res(request):
    return request.param


def created(srv, res):
    """A resource that exists: (path, ETag, version)."""
    path = res.fresh()
    st, h, rec = srv.json("PUT", path, res.body())
    assert st in (200, 201), rec
    assert h["ETag"] == f'"{rec["version"]}"'
    return path, h["ETag"], rec["version"]


def absent(srv, res):
    if res.singleton:
        pytest.skip("a singleton: it cannot be made absent")
    path = res.fresh()
    assert srv.request("GET", path).status == 404
    return path


def version_now(srv, path):
    st, h, rec = srv.json("GET", path)
    assert st == 200, rec
    return rec["version"]


def expect_error(reply, status, code):
    st, _, err = reply
    assert st == status, err
    assert err["error"]["code"] == code, err


# ---- reads: 304 and If-Match ----

@pytest.mark.parametrize("inm", ["{e}", "W/{e}", '"999999", {e}', "W/\"1\" ,, {e}", "*"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_read_if_none_match_current_is_304(srv, res, inm, method):
    path, etag, _ = created(srv, res)
    r = srv.request(method, path, headers={"If-None-Match": inm.format(e=etag)})
    assert r.status == 304
    assert r.headers["ETag"] == etag
    assert r.body == b""


def test_read_if_none_match_other_is_200(srv, res):
    path, etag, v = created(srv, res)
    r = srv.request("GET", path, headers={"If-None-Match": f'"{v + 1000}", "abc"'})
    assert r.status == 200 and r.json()["version"] == v
    assert r.headers["ETag"] == etag


def test_read_if_match(srv, res):
    path, etag, v = created(srv, res)
    assert srv.request("GET", path, headers={"If-Match": etag}).status == 200
    assert srv.request("GET", path, headers={"If-Match": f'"1000000", {etag}'}).status == 200
    expect_error(srv.json("GET", path, headers={"If-Match": f'"{v + 1000}"'}), 412,
                 "precondition_failed")
    expect_error(srv.json("GET", path, headers={"If-Match": f"W/{etag}"}), 412,
                 "precondition_failed")
    # If-Match is evaluated first: a failing one wins over a matching If-None-Match
    expect_error(srv.json("GET", path, headers={"If-Match": '"1000000"', "If-None-Match": etag}),
                 412, "precondition_failed")


def test_read_malformed_is_400(srv, res):
    path, etag, _ = created(srv, res)
    for h in ({"If-None-Match": "3"}, {"If-None-Match": '"3'}, {"If-Match": "abc"}):
        expect_error(srv.json("GET", path, headers=h), 400, "bad_header")


# ---- writes: If-Match ----

@pytest.mark.parametrize("tag", ['"abc"', '"0"', '"007"', "W/{e}", '"{v1000}"', '"abc", "{v1000}"'])
def test_write_if_match_no_match_is_412_and_changes_nothing(srv, res, tag):
    path, etag, v = created(srv, res)
    expect_error(srv.json("PUT", path, res.body(7),
                          headers={"If-Match": tag.format(e=etag, v1000=v + 1000)}),
                 412, "precondition_failed")
    assert version_now(srv, path) == v


def test_write_if_match_list_with_current_passes(srv, res):
    path, etag, v = created(srv, res)
    st, h, rec = srv.json("PUT", path, res.body(1),
                          headers={"If-Match": f'"abc", "{v + 1000}", {etag}'})
    assert st == 200, rec
    assert rec["version"] > v and h["ETag"] == f'"{rec["version"]}"'
    # one version among others that are not
    st, _, rec2 = srv.json("PUT", path, res.body(2), headers={"If-Match": f'"abc", {h["ETag"]}'})
    assert st == 200 and rec2["version"] > rec["version"], rec2


def test_write_if_match_star(srv, res):
    path, _, v = created(srv, res)
    st, _, rec = srv.json("PUT", path, res.body(3), headers={"If-Match": "*"})
    assert st == 200 and rec["version"] > v, rec
    if res.singleton:
        return
    path = absent(srv, res)
    expect_error(srv.json("PUT", path, res.body(), headers={"If-Match": "*"}), 412,
                 "precondition_failed")
    assert srv.request("GET", path).status == 404  # not created


def test_write_if_match_on_absent_is_412(srv, res):
    path = absent(srv, res)
    for tag in ('"1"', '"1", "2"', '"abc"'):
        expect_error(srv.json("PUT", path, res.body(), headers={"If-Match": tag}), 412,
                     "precondition_failed")
    assert srv.request("GET", path).status == 404


@pytest.mark.parametrize("value", ["abc", '"3', "W/3", '"3" "4"', "*, \"3\"", ""])
def test_write_malformed_is_400_and_changes_nothing(srv, res, value):
    path, etag, v = created(srv, res)
    for name in ("If-Match", "If-None-Match"):
        expect_error(srv.json("PUT", path, res.body(5), headers={name: value}), 400,
                     "bad_header")
    assert version_now(srv, path) == v


# ---- writes: If-None-Match ----

def test_write_if_none_match_star_creates_only_if_absent(srv, res):
    if res.singleton:
        path, _, v = created(srv, res)
    else:
        path = absent(srv, res)
        st, h, rec = srv.json("PUT", path, res.body(), headers={"If-None-Match": "*"})
        assert st == 201, rec
        v = rec["version"]
    expect_error(srv.json("PUT", path, res.body(9), headers={"If-None-Match": "*"}), 412,
                 "precondition_failed")
    assert version_now(srv, path) == v


def test_write_if_none_match_tags(srv, res):
    path, etag, v = created(srv, res)
    # the current tag listed (weak comparison): 412
    for inm in (etag, f"W/{etag}", f'"abc", {etag}'):
        expect_error(srv.json("PUT", path, res.body(4), headers={"If-None-Match": inm}), 412,
                     "precondition_failed")
    assert version_now(srv, path) == v
    # other tags: the write goes on
    st, _, rec = srv.json("PUT", path, res.body(4), headers={"If-None-Match": f'"{v + 1000}"'})
    assert st == 200 and rec["version"] > v, rec
    if not res.singleton:
        path = absent(srv, res)
        st, _, rec = srv.json("PUT", path, res.body(), headers={"If-None-Match": '"1"'})
        assert st == 201, rec


def test_write_both_headers_in_rfc_order(srv, res):
    path, etag, v = created(srv, res)
    expect_error(srv.json("PUT", path, res.body(6),
                          headers={"If-Match": etag, "If-None-Match": etag}),
                 412, "precondition_failed")
    expect_error(srv.json("PUT", path, res.body(6),
                          headers={"If-Match": '"abc"', "If-None-Match": '"1000000"'}),
                 412, "precondition_failed")
    assert version_now(srv, path) == v
    st, _, rec = srv.json("PUT", path, res.body(6),
                          headers={"If-Match": etag, "If-None-Match": '"1000000"'})
    assert st == 200 and rec["version"] > v, rec


# ---- DELETE ----

def test_delete_preconditions(srv, res):
    if not res.delete:
        pytest.skip("no DELETE on this resource")
    path, etag, v = created(srv, res)
    for h in ({"If-Match": '"abc"'}, {"If-Match": f"W/{etag}"}, {"If-None-Match": "*"},
              {"If-None-Match": f"W/{etag}"}):
        expect_error(srv.json("DELETE", path, headers=h), 412, "precondition_failed")
    assert version_now(srv, path) == v
    assert srv.request("DELETE", path, headers={"If-Match": f'"1000000", {etag}'}).status == 204
    assert srv.request("GET", path).status == 404
    expect_error(srv.json("DELETE", path, headers={"If-None-Match": "*"}), 404, "not_found")
    expect_error(srv.json("DELETE", path, headers={"If-Match": "*"}), 412,
                 "precondition_failed")


# ---- the race: the precondition is checked in the storage write ----

def race(d, res, rounds=6):
    for n in range(rounds):
        path, etag, v = created(d, res)
        barrier = threading.Barrier(2)
        out = [None, None]

        def one(i):
            c = d.connection()
            try:
                c.connect()  # connected before the barrier: the two requests go together
                barrier.wait(10)
                out[i] = d.json("PUT", path, res.body(100 + i), headers={"If-Match": etag},
                                conn=c)[0]
            finally:
                c.close()

        ts = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert sorted(out) == [200, 412], f"round {n}: {out}"
        assert version_now(d, path) > v


def test_race_same_if_match_one_wins(srv, res):
    race(srv, res)


def test_race_same_if_match_one_wins_sqlite(daemons, tmp_path, res):
    require_plugin("sqlite")
    d = daemons(config=sqlite_config(tmp_path / "cond.db"), workers=2).start()
    race(d, res, rounds=3)
