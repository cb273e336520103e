"""
Bounded memory and storage through normal calls (issue 17, items 8-12, 15,
16): preconditions on missing records, concurrent writers, page and record
size limits, retention, unreadable records.  Against the real rhemad on
loopback, on the memory, file and SQLite backends.
"""

import itertools
import uuid

import pytest

from conftest import Daemon, memory_config, plugin_available, sqlite_config

_seq = itertools.count(1)

BACKENDS = ["memory", "file", "sqlite"]


def new_id(prefix="x"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_seq)}"


def backend_config(backend, tmp):
    if backend == "memory":
        return memory_config()
    if backend == "sqlite":
        return sqlite_config(tmp / "store.db")
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    return f'persistence: {{ backend = "file"; file = {{ directory = "{data}"; }}; }};\n'


def start(daemons, tmp_path, backend, overrides=(), workers=2):
    if not plugin_available(backend):
        pytest.skip(f"storage plugin '{backend}' not built")
    d = daemons(config=backend_config(backend, tmp_path), overrides=overrides,
                workers=workers).start()
    d.backend = backend
    return d


@pytest.fixture(scope="module", params=BACKENDS)
def srv(request, tmp_path_factory):
    """A running rhemad per backend, shared by the tests of this module."""
    backend = request.param
    if not plugin_available(backend):
        pytest.skip(f"storage plugin '{backend}' not built")
    tmp = tmp_path_factory.mktemp(f"limits-{backend}")
    d = Daemon(tmp, name=f"rhemad-{backend}", config=backend_config(backend, tmp)).start()
    d.backend = backend
    yield d
    d.kill()


# ---- item 16: If-Match: * on a missing resource is 412 and creates nothing ----

STAR_CREATES = [
    ("session", "/v1/sessions/{}", {"topic": "t"}),
    ("agent", "/v1/agents/{}", {"name": "n", "agent_type": "coder"}),
    ("configuration", "/v1/configurations/{}", {"config_data": {"a": 1}}),
    ("consensus state", "/v1/consensus/{}/state", {"term": 1}),
    ("service", "/v1/services/{}", {"name": "web", "address": "127.0.0.1:9001"}),
]


@pytest.mark.parametrize("what,path,body", STAR_CREATES, ids=[c[0] for c in STAR_CREATES])
def test_if_match_star_on_missing_is_412_and_creates_nothing(srv, what, path, body):
    p = path.format(new_id())
    st, _, err = srv.json("PUT", p, body, headers={"If-Match": "*"})
    assert st == 412, err
    assert err["error"]["code"] == "precondition_failed"
    assert "If-Match: *" in err["error"]["message"]
    assert srv.request("GET", p).status == 404
    # the same PUT without the precondition creates; then If-Match: * updates
    st, _, rec = srv.json("PUT", p, body)
    assert st == 201, rec
    st, _, rec = srv.json("PUT", p, body, headers={"If-Match": "*"})
    assert st == 200, rec


def test_empty_configuration_name_is_400(srv):
    for path in ("/v1/configurations/", "/v1/configurations//versions"):
        st, _, err = srv.json("GET", path)
        assert st == 400, (path, err)
        assert "configuration name" in err["error"]["message"]
    st, _, err = srv.json("PUT", "/v1/configurations/", {"config_data": {}})
    assert st == 400, err


# ---- item 15: unconditional writes wait their turn; deletes raise no false alarm ----

def concurrently(n, fn):
    """Run fn(i) for i in range(n) on n threads at once; their results in order."""
    import threading
    results = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        try:
            barrier.wait(timeout=30)
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001 -- reported by the assertion below
            results[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a client thread did not finish"
    return results


@pytest.mark.parametrize("backend", BACKENDS)
def test_50_concurrent_unconditional_puts_all_succeed(daemons, tmp_path, backend):
    d = start(daemons, tmp_path, backend, workers=4)
    sid = new_id("hot")
    assert d.request("PUT", f"/v1/sessions/{sid}", {"topic": "start"}).status == 201
    statuses = concurrently(50, lambda i: d.request(
        "PUT", f"/v1/sessions/{sid}", {"topic": f"writer {i}"}, timeout=60).status)
    assert statuses == [200] * 50, statuses
    st, _, rec = d.json("GET", f"/v1/sessions/{sid}")
    assert st == 200 and rec["version"] > 1
    assert rec["topic"].startswith("writer ")
    # appends too: 50 different messages, every one kept
    statuses = concurrently(50, lambda i: d.request(
        "POST", f"/v1/sessions/{sid}/messages",
        {"id": f"m{i}", "message_type": "note", "sender_id": "a", "content": str(i)},
        timeout=60).status)
    assert statuses == [201] * 50, statuses
    st, _, rec = d.json("GET", f"/v1/sessions/{sid}")
    assert sorted(m["id"] for m in rec["messages"]) == sorted(f"m{i}" for i in range(50))
    assert "being written concurrently" not in d.log()


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_deletes_log_no_false_index_warning(daemons, tmp_path, backend):
    d = start(daemons, tmp_path, backend, workers=4)
    sids = [new_id("del") for _ in range(10)]
    for sid in sids:
        st = d.request("PUT", f"/v1/sessions/{sid}",
                       {"topic": "t", "participants": ["alice", "bob"]}).status
        assert st == 201
    # every session deleted by 5 clients at once: one 204, the others 404
    statuses = concurrently(50, lambda i: d.request(
        "DELETE", f"/v1/sessions/{sids[i % 10]}", timeout=60).status)
    assert sorted(statuses) == sorted([204] * 10 + [404] * 40), statuses
    for sid in sids:
        assert d.request("GET", f"/v1/sessions/{sid}").status == 404
    st, _, page = d.json("GET", "/v1/sessions?participant=alice")
    assert st == 200 and page["items"] == []
    assert "index entry missing" not in d.log()


# ---- item 9: persistence.max_record_size_bytes; an append answers the message ----

@pytest.mark.parametrize("backend", BACKENDS)
def test_record_size_limit_refuses_and_changes_nothing(daemons, tmp_path, backend):
    d = start(daemons, tmp_path, backend, overrides=["persistence.max_record_size_bytes=4096"])
    sid = new_id("big")
    st, h, rec = d.json("PUT", f"/v1/sessions/{sid}", {"topic": "t"})
    assert st == 201, rec
    # appends grow the record until one would pass the limit
    n = 0
    while True:
        st, h2, ans = d.json("POST", f"/v1/sessions/{sid}/messages",
                             {"id": f"m{n}", "message_type": "note", "sender_id": "a",
                              "content": "x" * 500})
        if st != 201:
            break
        assert ans["size_bytes"] <= 4096 and ans["message_count"] == n + 1
        assert len(d.request("POST", f"/v1/sessions/{sid}/messages",
                             {"id": f"m{n}", "message_type": "note", "sender_id": "a",
                              "content": "x" * 500}).body) < 1024  # the message, not the session
        n += 1
        assert n < 20, "the limit never applied"
    assert st == 413, ans
    assert ans["error"]["code"] == "too_large"
    assert "persistence.max_record_size_bytes" in ans["error"]["message"]
    assert n >= 3
    st, _, now = d.json("GET", f"/v1/sessions/{sid}")
    assert st == 200 and len(now["messages"]) == n and now["size_bytes"] <= 4096
    version = now["version"]
    # a PUT of a record over the limit: refused too, nothing changed
    st, _, err = d.json("PUT", f"/v1/sessions/{sid}", {"topic": "y" * 1000,
                                                        "decisions": [{"d": "z" * 4000}]})
    assert st == 413 and "persistence.max_record_size_bytes" in err["error"]["message"], err
    st, _, now = d.json("GET", f"/v1/sessions/{sid}")
    assert now["version"] == version and now["topic"] == "t"
    # the limit applies to every record, not only sessions
    st, _, err = d.json("PUT", "/v1/configurations/big", {"config_data": {"v": "c" * 5000}})
    assert st == 413, err
    assert d.request("GET", "/v1/configurations/big").status == 404
    # a new session over the limit is not created
    st, _, err = d.json("PUT", f"/v1/sessions/{sid}-2", {"topic": "t",
                                                          "decisions": [{"d": "z" * 5000}]})
    assert st == 413, err
    assert d.request("GET", f"/v1/sessions/{sid}-2").status == 404
    st, _, page = d.json("GET", "/v1/sessions?participant=nobody")
    assert st == 200


def test_record_size_limit_is_checked_at_load(tmp_path):
    from conftest import run_rhemad
    conf = tmp_path / "r.conf"
    conf.write_text(memory_config())
    r = run_rhemad(["-t", "-c", str(conf), "-o", "persistence.max_record_size_bytes=10"])
    assert r.returncode != 0
    assert "max_record_size_bytes" in (r.stdout + r.stderr)


# ---- item 8: list pages are capped by bytes too ----

PAGE_CAP = 4096


def pages(d, path, limit=1000):
    """Every page of a list route, following next_cursor: [(bytes, page), ...]."""
    out, cursor = [], None
    sep = "&" if "?" in path else "?"
    for _ in range(200):
        r = d.request("GET", f"{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert r.status == 200, (path, r.body[:300])
        page = r.json()
        out.append((len(r.body), page))
        cursor = page["next_cursor"]
        if cursor is None:
            return out
    raise AssertionError(f"{path}: the pages never end")


def check_capped(d, path, want_ids, key, item_bytes):
    got = pages(d, path)
    ids = [i[key] for _, p in got for i in p["items"]]
    assert ids == want_ids, path  # every item once, in order, across the pages
    assert len(got) > 1, f"{path}: one page of {len(want_ids)} items, the cap never applied"
    for size, page in got:
        assert page["items"], f"{path}: an empty page"
        # a page ends with the item that passes the cap
        assert size <= PAGE_CAP + item_bytes + 512, (path, size)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_list_pages_are_capped_by_bytes(daemons, tmp_path, backend):
    d = start(daemons, tmp_path, backend, overrides=[f"service.max_page_bytes={PAGE_CAP}"])
    big = "b" * 1500
    # sessions
    sids = [f"cap-{i:02d}" for i in range(12)]
    for sid in sids:
        assert d.request("PUT", f"/v1/sessions/{sid}",
                         {"topic": big[:1000], "participants": ["alice"]}).status == 201
    check_capped(d, "/v1/sessions", sids, "id", 1500)
    check_capped(d, "/v1/sessions?participant=alice", sids, "id", 1500)
    check_capped(d, "/v1/sessions?status=Active&participant=alice", sids, "id", 1500)
    # the count limit still applies under the cap
    st, _, page = d.json("GET", "/v1/sessions?limit=1")
    assert len(page["items"]) == 1 and page["next_cursor"] == sids[0]
    # configuration versions: the route of the 188 MB page
    for v in range(12):
        st, _, rec = d.json("PUT", "/v1/configurations/cfg", {"config_data": {"v": v, "pad": big}})
        assert st in (200, 201), rec
    check_capped(d, "/v1/configurations/cfg/versions", list(range(1, 13)), "version", 1700)
    # agents and their transitions
    aids = [f"agent-{i:02d}" for i in range(12)]
    for aid in aids:
        st, _, rec = d.json("PUT", f"/v1/agents/{aid}", {"name": big[:200], "agent_type": "coder",
                                                          "capabilities": [f"c{j}" for j in range(40)]})
        assert st == 201, rec
    check_capped(d, "/v1/agents", aids, "id", 1500)
    for n in range(30):
        st, _, rec = d.json("PUT", "/v1/agents/agent-00",
                            {"name": "n", "agent_type": "coder",
                             "status": "Busy" if n % 2 == 0 else "Idle",
                             "status_reason": big[:300]})
        assert st == 200, rec
    got = pages(d, "/v1/agents/agent-00/transitions")
    seqs = [t["seq"] for _, p in got for t in p["items"]]
    assert seqs == sorted(set(seqs)) and len(seqs) == 31 and len(got) > 1
    # services
    svc = [f"svc-{i:02d}" for i in range(12)]
    for sid in svc:
        st, _, rec = d.json("PUT", f"/v1/services/{sid}",
                            {"name": "web", "address": "127.0.0.1:9001",
                             "metadata": {f"k{j}": "v" * 40 for j in range(20)}})
        assert st == 201, rec
    check_capped(d, "/v1/services", svc, "service_id", 1500)
    check_capped(d, "/v1/services?name=web", svc, "service_id", 1500)
    # consensus: the log of a node and the list of nodes
    assert d.request("PUT", "/v1/consensus/n1/state", {"term": 1}).status == 201
    for i in range(1, 13):
        st, _, rec = d.json("POST", "/v1/consensus/n1/entries",
                            {"index": i, "term": 1, "command": "set", "data": {"pad": big}})
        assert st in (200, 201), rec
    got = pages(d, "/v1/consensus/n1/entries")
    assert [e["index"] for _, p in got for e in p["items"]] == list(range(1, 13))
    assert len(got) > 1
    nodes = [f"node-{i:03d}" for i in range(60)]
    for n in nodes:
        assert d.request("PUT", f"/v1/consensus/{n}/state", {"term": 1}).status == 201
    got = pages(d, "/v1/consensus")
    listed = [i["node_id"] for _, p in got for i in p["items"]]
    assert [x for x in listed if x.startswith("node-")] == nodes and len(got) > 1


# ---- item 10: retention of configuration versions and agent transitions; DELETE ----

@pytest.mark.parametrize("backend", BACKENDS)
def test_retention_keeps_the_last_versions_and_transitions(daemons, tmp_path, backend):
    d = start(daemons, tmp_path, backend,
              overrides=["persistence.configuration_versions_retained=5",
                         "persistence.agent_transitions_retained=4"])
    for v in range(1, 13):
        st, _, rec = d.json("PUT", "/v1/configurations/ret", {"config_data": {"v": v}})
        assert st in (200, 201) and rec["version"] == v, rec
    got = pages(d, "/v1/configurations/ret/versions")
    assert [i["version"] for _, p in got for i in p["items"]] == list(range(8, 13))
    st, _, err = d.json("GET", "/v1/configurations/ret?version=7")
    assert st == 404 and "no version 7" in err["error"]["message"], err
    st, _, rec = d.json("GET", "/v1/configurations/ret?version=8")
    assert st == 200 and rec["config_data"] == {"v": 8}
    st, _, rec = d.json("GET", "/v1/configurations/ret")
    assert st == 200 and rec["version"] == 12

    assert d.request("PUT", "/v1/agents/ag", {"name": "n", "agent_type": "coder"}).status == 201
    for n in range(10):
        st, _, rec = d.json("PUT", "/v1/agents/ag", {"name": "n", "agent_type": "coder",
                                                     "status": "Busy" if n % 2 == 0 else "Idle"})
        assert st == 200, rec
    st, _, page = d.json("GET", "/v1/agents/ag/transitions?limit=1000")
    seqs = [t["seq"] for t in page["items"]]
    assert len(seqs) == 4 and seqs == sorted(seqs), seqs
    st, _, agent = d.json("GET", "/v1/agents/ag")
    assert seqs[-1] == agent["transition_count"], (seqs, agent)
    assert "index entry missing" not in d.log()


@pytest.mark.parametrize("backend", BACKENDS)
def test_configuration_delete_with_if_match(daemons, tmp_path, backend):
    d = start(daemons, tmp_path, backend)
    for v in range(1, 4):
        assert d.json("PUT", "/v1/configurations/gone", {"config_data": {"v": v}})[0] in (200, 201)
    # If-Match names another version: 412, nothing deleted
    st, _, err = d.json("DELETE", "/v1/configurations/gone", headers={"If-Match": '"2"'})
    assert st == 412, err
    assert d.json("GET", "/v1/configurations/gone")[2]["version"] == 3
    # If-None-Match: * on an existing one: 412 (RFC 9110), nothing deleted
    st, _, err = d.json("DELETE", "/v1/configurations/gone", headers={"If-None-Match": "*"})
    assert st == 412, err
    assert d.json("GET", "/v1/configurations/gone")[2]["version"] == 3
    r = d.request("DELETE", "/v1/configurations/gone", headers={"If-Match": '"3"'})
    assert r.status == 204, r.body
    assert d.request("GET", "/v1/configurations/gone").status == 404
    assert d.request("GET", "/v1/configurations/gone?version=1").status == 404
    assert d.request("GET", "/v1/configurations/gone/versions").status == 404
    st, _, err = d.json("DELETE", "/v1/configurations/gone")
    assert st == 404, err
    st, _, err = d.json("DELETE", "/v1/configurations/gone", headers={"If-Match": "*"})
    assert st == 412, err
    # a configuration of the same name starts again at version 1, with no old history
    st, _, rec = d.json("PUT", "/v1/configurations/gone", {"config_data": {"again": True}})
    assert st == 201 and rec["version"] == 1, rec
    got = pages(d, "/v1/configurations/gone/versions")
    assert [i["version"] for _, p in got for i in p["items"]] == [1]
    # an unconditional delete; an empty name is 400
    assert d.request("DELETE", "/v1/configurations/gone").status == 204
    assert d.json("DELETE", "/v1/configurations/")[0] == 400
