"""
The coordination-sessions API end to end (DESIGN.md §5, §6), against the
real rhemad on loopback, on the memory backend and on SQLite.
"""

import itertools
import random
import re
import time
import uuid

import pytest

from conftest import Daemon, memory_config, plugin_available, sqlite_config

METADATA = ("created_at", "updated_at", "access_count", "last_accessed", "size_bytes",
            "version")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

_seq = itertools.count(1)


def new_id(prefix="s"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_seq)}"


def session_body(**kw):
    body = {"topic": "plan the rollout", "participants": ["alice", "bob"]}
    body.update(kw)
    return body


def message_body(mid, **kw):
    m = {"id": mid, "message_type": "proposal", "priority": "High", "sender_id": "alice",
         "recipient_ids": ["bob"], "content": "ship on friday",
         "timestamp": "2026-01-02T03:04:05Z", "requires_ack": True, "metadata": {"k": "v"}}
    m.update(kw)
    return m


def etag_version(headers):
    etag = headers.get("ETag")
    assert etag is not None, "no ETag header"
    m = re.fullmatch(r'"(\d+)"', etag)
    assert m, f"ETag {etag!r} is not a strong quoted version"
    return int(m.group(1))


def fields(record):
    """The record without the metadata that reads change."""
    return {k: v for k, v in record.items() if k not in ("access_count", "last_accessed")}


def assert_error(status, body, want_status, code=None, mentions=None):
    assert status == want_status, f"expected {want_status}, got {status}: {body}"
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
    if code:
        assert body["error"].get("code") == code, body
    if mentions:
        assert mentions in body["error"]["message"], \
            f"error message does not name {mentions!r}: {body['error']['message']!r}"


# ---- daemons shared by a module ----

BACKENDS = ["memory", "sqlite"]


@pytest.fixture(scope="module", params=BACKENDS)
def srv(request, tmp_path_factory):
    """A running rhemad per storage backend, shared by the tests of this module."""
    backend = request.param
    if not plugin_available(backend):
        pytest.skip(f"storage plugin '{backend}' not built")
    tmp = tmp_path_factory.mktemp(f"sessions-{backend}")
    conf = memory_config() if backend == "memory" else sqlite_config(tmp / "sessions.db")
    d = Daemon(tmp, name=f"rhemad-{backend}", config=conf).start()
    d.backend = backend
    yield d
    d.kill()


@pytest.fixture(scope="module")
def mem(tmp_path_factory):
    """A running rhemad on the memory backend with default HTTP settings."""
    d = Daemon(tmp_path_factory.mktemp("sessions-mem"), name="rhemad-mem").start()
    yield d
    d.kill()


# ---- create, read, update, delete ----

def test_put_creates_201_with_etag_location_request_id(srv):
    sid = new_id()
    body = session_body(status="Paused", decisions=[{"what": "x"}])
    st, h, rec = srv.json("PUT", f"/v1/sessions/{sid}", body)
    assert st == 201, rec
    assert etag_version(h) == rec["version"]
    assert h.get("Location") == f"/v1/sessions/{sid}"
    assert h.get("X-Request-Id")
    assert h.get("Content-Type", "").startswith("application/json")
    assert rec["id"] == sid
    assert rec["topic"] == body["topic"]
    assert rec["participants"] == body["participants"]
    assert rec["status"] == "Paused"
    assert rec["messages"] == [] and rec["decisions"] == [{"what": "x"}]
    assert RFC3339.match(rec["started_at"]) and rec["ended_at"] is None
    for k in METADATA:
        assert k in rec, f"missing metadata field {k}: {rec}"
    assert RFC3339.match(rec["created_at"]) and RFC3339.match(rec["updated_at"])
    assert rec["access_count"] == 0 and rec["last_accessed"] is None
    assert isinstance(rec["size_bytes"], int) and rec["size_bytes"] > 0
    assert isinstance(rec["version"], int) and rec["version"] >= 1


def test_put_defaults_status_active(srv):
    sid = new_id()
    st, _, rec = srv.json("PUT", f"/v1/sessions/{sid}", {"topic": "t"})
    assert st == 201, rec
    assert rec["status"] == "Active" and rec["participants"] == []


def test_put_update_200_larger_version(srv):
    sid = new_id()
    st, h1, r1 = srv.json("PUT", f"/v1/sessions/{sid}", session_body())
    assert st == 201
    st, h2, r2 = srv.json("PUT", f"/v1/sessions/{sid}",
                          session_body(topic="changed", status="Completed",
                                       ended_at="2026-02-03T04:05:06Z"))
    assert st == 200, r2
    assert "Location" not in h2
    assert etag_version(h2) == r2["version"] > r1["version"]
    assert r2["topic"] == "changed" and r2["status"] == "Completed"
    assert r2["ended_at"].startswith("2026-02-03T04:05:06")
    assert r2["created_at"] == r1["created_at"]
    st, h3, r3 = srv.json("GET", f"/v1/sessions/{sid}")
    assert st == 200 and r3["topic"] == "changed" and r3["version"] == r2["version"]


def test_put_back_what_was_read(srv):
    """A client may PUT back a record it read, metadata included."""
    sid = new_id()
    srv.json("PUT", f"/v1/sessions/{sid}", session_body())
    st, h, rec = srv.json("GET", f"/v1/sessions/{sid}")
    rec["topic"] = "round trip"
    st, h, r2 = srv.json("PUT", f"/v1/sessions/{sid}", rec,
                         headers={"If-Match": h["ETag"]})
    assert st == 200, r2
    assert r2["topic"] == "round trip" and r2["version"] > rec["version"]


def test_get_200_etag_and_access_count_increments(srv):
    sid = new_id()
    st, _, created = srv.json("PUT", f"/v1/sessions/{sid}", session_body())
    assert st == 201
    conn = srv.connection()  # one connection: one worker, counts visible at once
    try:
        counts = []
        for _ in range(3):
            st, h, rec = srv.json("GET", f"/v1/sessions/{sid}", conn=conn)
            assert st == 200, rec
            assert etag_version(h) == rec["version"] == created["version"]
            assert fields(rec) == fields(created)
            assert RFC3339.match(rec["last_accessed"])
            counts.append(rec["access_count"])
    finally:
        conn.close()
    assert counts == [1, 2, 3]
    # the counts are flushed at least once a second: any worker sees them all
    time.sleep(1.5)
    st, h, rec = srv.json("GET", f"/v1/sessions/{sid}")
    assert rec["access_count"] == 4
    assert rec["version"] == created["version"], "a read must not change the version"


def test_concurrent_gets_each_get_their_own_answer(srv):
    """GETs from many connections at once -- a worker answers those of one
    loop turn together (api_sessions.h) -- each get their own session, a
    missing one 404, and every read is counted once."""
    import threading
    ids = [new_id("cg") for _ in range(24)]
    for sid in ids:
        assert srv.json("PUT", f"/v1/sessions/{sid}", session_body(topic=sid))[0] == 201
    reads = {sid: 0 for sid in ids}
    lock = threading.Lock()
    failures = []

    def reader(seed):
        rnd = random.Random(seed)
        conn = srv.connection()
        try:
            for _ in range(60):
                missing = rnd.random() < 0.2
                sid = new_id("cg-missing") if missing else rnd.choice(ids)
                st, h, rec = srv.json("GET", f"/v1/sessions/{sid}", conn=conn)
                if missing:
                    ok = st == 404 and sid in rec["error"]["message"]
                else:
                    ok = st == 200 and rec["id"] == sid and rec["topic"] == sid \
                        and etag_version(h) == rec["version"]
                    with lock:
                        reads[sid] += 1
                if not ok:
                    failures.append((sid, st, rec))
        finally:
            conn.close()

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures[:3]
    time.sleep(1.5)  # the counts are flushed at least once a second
    for sid in ids:
        st, _, rec = srv.json("GET", f"/v1/sessions/{sid}")
        assert st == 200 and rec["access_count"] == reads[sid] + 1, (sid, rec, reads[sid])


def test_get_if_none_match_current_etag_304(srv):
    sid = new_id()
    st, h, rec = srv.json("PUT", f"/v1/sessions/{sid}", session_body())
    r = srv.request("GET", f"/v1/sessions/{sid}", headers={"If-None-Match": h["ETag"]})
    assert r.status == 304
    assert r.body == b""
    assert r.headers.get("ETag") == h["ETag"]
    r = srv.request("GET", f"/v1/sessions/{sid}",
                    headers={"If-None-Match": f'"{rec["version"] + 7}"'})
    assert r.status == 200 and r.json()["id"] == sid


def test_if_match_stale_412_nothing_changed(srv):
    sid = new_id()
    st, h1, r1 = srv.json("PUT", f"/v1/sessions/{sid}", session_body())
    st, h2, r2 = srv.json("PUT", f"/v1/sessions/{sid}", session_body(topic="v2"),
                          headers={"If-Match": h1["ETag"]})
    assert st == 200 and r2["version"] > r1["version"]
    st, _, err = srv.json("PUT", f"/v1/sessions/{sid}", session_body(topic="stale write"),
                          headers={"If-Match": h1["ETag"]})
    assert_error(st, err, 412, "precondition_failed")
    st, _, err = srv.json("DELETE", f"/v1/sessions/{sid}", headers={"If-Match": h1["ETag"]})
    assert_error(st, err, 412, "precondition_failed")
    st, _, err = srv.json("POST", f"/v1/sessions/{sid}/messages", message_body("m1"),
                          headers={"If-Match": h1["ETag"]})
    assert_error(st, err, 412, "precondition_failed")
    st, h, now = srv.json("GET", f"/v1/sessions/{sid}")
    assert st == 200
    assert now["topic"] == "v2" and now["version"] == r2["version"] and now["messages"] == []
    assert h["ETag"] == h2["ETag"]


def test_if_match_on_missing_session_412(srv):
    sid = new_id()
    st, _, err = srv.json("PUT", f"/v1/sessions/{sid}", session_body(),
                          headers={"If-Match": '"1"'})
    assert_error(st, err, 412)
    assert srv.request("GET", f"/v1/sessions/{sid}").status == 404


def test_if_none_match_star_existing_412(srv):
    sid = new_id()
    st, h, first = srv.json("PUT", f"/v1/sessions/{sid}", session_body(),
                            headers={"If-None-Match": "*"})
    assert st == 201, first
    st, _, err = srv.json("PUT", f"/v1/sessions/{sid}", session_body(topic="again"),
                          headers={"If-None-Match": "*"})
    assert_error(st, err, 412, "precondition_failed")
    st, _, now = srv.json("GET", f"/v1/sessions/{sid}")
    assert now["topic"] == first["topic"] and now["version"] == first["version"]


def test_malformed_if_match_400(srv):
    sid = new_id()
    srv.json("PUT", f"/v1/sessions/{sid}", session_body())
    st, _, err = srv.json("PUT", f"/v1/sessions/{sid}", session_body(topic="x"),
                          headers={"If-Match": "W/\"1\""})
    # a weak validator never matches a strong comparison: 400 or 412, never a write
    assert st in (400, 412), err
    st, _, now = srv.json("GET", f"/v1/sessions/{sid}")
    assert now["topic"] != "x"


def test_delete_204_then_404(srv):
    sid = new_id()
    srv.json("PUT", f"/v1/sessions/{sid}", session_body(participants=["del-p"]))
    r = srv.request("DELETE", f"/v1/sessions/{sid}")
    assert r.status == 204 and r.body == b""
    st, h, err = srv.json("GET", f"/v1/sessions/{sid}")
    assert_error(st, err, 404, "not_found", sid)
    assert h.get("Content-Type", "").startswith("application/json")
    st, _, err = srv.json("DELETE", f"/v1/sessions/{sid}")
    assert_error(st, err, 404, "not_found")
    # the indexes forget it too
    st, _, page = srv.json("GET", "/v1/sessions?participant=del-p&limit=1000")
    assert sid not in [i["id"] for i in page["items"]]


def test_delete_then_recreate_starts_fresh(srv):
    sid = new_id()
    srv.json("PUT", f"/v1/sessions/{sid}", session_body())
    srv.json("GET", f"/v1/sessions/{sid}")
    assert srv.request("DELETE", f"/v1/sessions/{sid}").status == 204
    st, _, rec = srv.json("PUT", f"/v1/sessions/{sid}", session_body(topic="reborn"),
                          headers={"If-None-Match": "*"})
    assert st == 201, rec
    assert rec["topic"] == "reborn" and rec["access_count"] == 0


# ---- listing ----

def list_all(srv, query, limit):
    """Follow next_cursor through every page; returns the pages."""
    pages, cursor = [], None
    for _ in range(100):
        q = f"{query}&limit={limit}" if query else f"limit={limit}"
        if cursor is not None:
            q += f"&cursor={cursor}"
        st, _, page = srv.json("GET", f"/v1/sessions?{q}")
        assert st == 200, page
        assert set(page) <= {"items", "next_cursor"}, page
        pages.append(page)
        cursor = page.get("next_cursor")
        if cursor is None:
            return pages
        assert len(page["items"]) == limit, "a page before the last must be full"
    raise AssertionError("pagination does not end")


def test_list_paginates_and_filters(srv):
    tag = uuid.uuid4().hex[:8]
    part, other = f"p-{tag}", f"q-{tag}"
    active = [f"l-{tag}-{i:02d}" for i in range(7)]
    paused = [f"l-{tag}-p{i}" for i in range(2)]
    outsider = f"l-{tag}-x"
    order = active + paused
    random.shuffle(order)
    for sid in order:
        st, _, _ = srv.json("PUT", f"/v1/sessions/{sid}",
                            session_body(participants=[part, "bob"],
                                         status="Paused" if sid in paused else "Active"))
        assert st == 201
    assert srv.json("PUT", f"/v1/sessions/{outsider}",
                    session_body(participants=[other], status="Active"))[0] == 201

    pages = list_all(srv, f"status=Active&participant={part}", 2)
    assert [len(p["items"]) for p in pages] == [2, 2, 2, 1]
    got = [i["id"] for p in pages for i in p["items"]]
    assert got == sorted(active)
    assert pages[-1]["next_cursor"] is None
    for item in (i for p in pages for i in p["items"]):
        assert item["status"] == "Active" and part in item["participants"]
        for k in METADATA:
            assert k in item, f"list item lacks {k}"

    pages = list_all(srv, f"participant={part}", 3)
    assert [i["id"] for p in pages for i in p["items"]] == sorted(active + paused)

    pages = list_all(srv, f"status=Paused&participant={part}", 5)
    assert [i["id"] for p in pages for i in p["items"]] == sorted(paused)
    assert len(pages) == 1

    st, _, page = srv.json("GET", f"/v1/sessions?participant={other}")
    assert [i["id"] for i in page["items"]] == [outsider]
    assert page.get("next_cursor") is None

    st, _, page = srv.json("GET", f"/v1/sessions?participant=nobody-{tag}")
    assert st == 200 and page["items"] == [] and page.get("next_cursor") is None

    # an update moves a session between status indexes
    srv.json("PUT", f"/v1/sessions/{sorted(active)[0]}",
             session_body(participants=[part], status="Cancelled"))
    pages = list_all(srv, f"status=Active&participant={part}", 10)
    assert [i["id"] for p in pages for i in p["items"]] == sorted(active)[1:]
    pages = list_all(srv, f"status=Cancelled&participant={part}", 10)
    assert [i["id"] for p in pages for i in p["items"]] == sorted(active)[:1]


def test_list_unfiltered_is_in_id_order_without_duplicates(srv):
    tag = uuid.uuid4().hex[:8]
    mine = [f"u-{tag}-{i}" for i in range(5)]
    for sid in reversed(mine):
        assert srv.json("PUT", f"/v1/sessions/{sid}", session_body())[0] == 201
    pages = list_all(srv, "", 4)
    ids = [i["id"] for p in pages for i in p["items"]]
    assert ids == sorted(ids), "items are not in id order"
    assert len(ids) == len(set(ids)), "a session appears twice"
    assert set(mine) <= set(ids)


# ---- messages ----

def test_post_message_appends_201_then_idempotent_200_then_conflict_409(srv):
    sid = new_id()
    st, _, created = srv.json("PUT", f"/v1/sessions/{sid}", session_body())
    msg = message_body("m-1")
    st, h, rec = srv.json("POST", f"/v1/sessions/{sid}/messages", msg)
    assert st == 201, rec
    # the answer is the message and the session's version, not the whole session
    assert set(rec) == {"session_id", "version", "size_bytes", "message_count", "message"}, rec
    assert rec["session_id"] == sid and rec["message_count"] == 1
    assert etag_version(h) == rec["version"] > created["version"]
    m = rec["message"]
    for k in ("id", "message_type", "priority", "sender_id", "recipient_ids", "content",
              "requires_ack", "metadata"):
        assert m[k] == msg[k], k
    assert m["timestamp"].startswith("2026-01-02T03:04:05")
    assert "payload" in m and "expires_at" in m
    st, _, now = srv.json("GET", f"/v1/sessions/{sid}")
    assert now["messages"] == [m] and now["version"] == rec["version"]
    assert now["size_bytes"] == rec["size_bytes"]

    st, h2, again = srv.json("POST", f"/v1/sessions/{sid}/messages", msg)
    assert st == 200, again
    assert again == rec, "a retry answers what the first append answered"
    assert etag_version(h2) == rec["version"]
    st, _, now = srv.json("GET", f"/v1/sessions/{sid}")
    assert len(now["messages"]) == 1, "the retried message was stored twice"
    # the ETag of the answer chains into the next conditional write
    st, _, rec1b = srv.json("POST", f"/v1/sessions/{sid}/messages", message_body("m-1b"),
                            headers={"If-Match": h2["ETag"]})
    assert st == 201 and rec1b["message_count"] == 2, rec1b
    st, _, err = srv.json("POST", f"/v1/sessions/{sid}/messages", message_body("m-1c"),
                          headers={"If-Match": h2["ETag"]})
    assert_error(st, err, 412, "precondition_failed")

    st, _, err = srv.json("POST", f"/v1/sessions/{sid}/messages",
                          message_body("m-1", content="something else"))
    assert_error(st, err, 409, "conflict")

    st, _, rec2 = srv.json("POST", f"/v1/sessions/{sid}/messages", message_body("m-2"))
    assert st == 201 and rec2["message"]["id"] == "m-2" and rec2["message_count"] == 3
    st, _, now = srv.json("GET", f"/v1/sessions/{sid}")
    assert [x["id"] for x in now["messages"]] == ["m-1", "m-1b", "m-2"]
    assert [x["content"] for x in now["messages"]] == ["ship on friday"] * 3


def test_post_message_retry_without_timestamp_is_idempotent(srv):
    """An identical retry is the same message even when the server fills timestamp."""
    sid = new_id()
    srv.json("PUT", f"/v1/sessions/{sid}", session_body())
    msg = message_body("m-nots")
    del msg["timestamp"]
    st, _, rec = srv.json("POST", f"/v1/sessions/{sid}/messages", msg)
    assert st == 201, rec
    time.sleep(0.01)
    st, _, again = srv.json("POST", f"/v1/sessions/{sid}/messages", msg)
    assert st == 200, f"identical retry refused: {st} {again}"
    assert again["message_count"] == 1 and again["message"] == rec["message"]


def test_post_message_to_missing_session_404(srv):
    sid = new_id()
    st, _, err = srv.json("POST", f"/v1/sessions/{sid}/messages", message_body("m"))
    assert_error(st, err, 404, "not_found")
    assert srv.request("GET", f"/v1/sessions/{sid}").status == 404


# ---- bad input: 400 naming the field, nothing stored ----

BAD_BODIES = [
    ("malformed JSON", b'{"topic": "x", ', "JSON"),
    ("JSON array", b'[{"topic": "x"}]', "body"),
    ("JSON string", b'"topic"', ""),
    ("empty body", b"", "body"),
    ("topic number", {"topic": 5}, "topic"),
    ("topic missing", {"participants": ["a"]}, "topic"),
    ("participants string", {"topic": "t", "participants": "a"}, "participants"),
    ("participant bad id", {"topic": "t", "participants": ["a b"]}, "participants"),
    ("participant duplicate", {"topic": "t", "participants": ["a", "a"]}, "participants"),
    ("status lowercase", {"topic": "t", "status": "active"}, "status"),
    ("unknown field", {"topic": "t", "colour": "red"}, "colour"),
    ("bad timestamp", {"topic": "t", "started_at": "yesterday"}, "started_at"),
    ("bad ended_at", {"topic": "t", "ended_at": "2026-13-45T99:00:00Z"}, "ended_at"),
    ("messages not array", {"topic": "t", "messages": {}}, "messages"),
    ("bad message priority", {"topic": "t", "messages": [message_body("m", priority="Urgent")]},
     "priority"),
    ("decisions not objects", {"topic": "t", "decisions": [1]}, "decisions"),
]


@pytest.mark.parametrize("what,body,field", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_body_400_names_field_stores_nothing(srv, what, body, field):
    sid = new_id("bad")
    marker = f"bp-{sid}"
    if isinstance(body, dict) and "participants" not in body:
        body = dict(body, participants=[marker])
    r = srv.request("PUT", f"/v1/sessions/{sid}", body)
    assert_error(r.status, r.json(), 400, mentions=field)
    assert srv.request("GET", f"/v1/sessions/{sid}").status == 404, f"{what}: stored anyway"
    st, _, page = srv.json("GET", f"/v1/sessions?participant={marker}")
    assert st == 200 and page["items"] == [], f"{what}: indexed anyway"


def test_body_id_differs_from_path_400(srv):
    sid, other = new_id("bad"), new_id("bad")
    st, _, err = srv.json("PUT", f"/v1/sessions/{sid}", session_body(id=other))
    assert_error(st, err, 400, mentions="id")
    assert srv.request("GET", f"/v1/sessions/{sid}").status == 404
    assert srv.request("GET", f"/v1/sessions/{other}").status == 404


def test_bad_update_changes_nothing(srv):
    sid = new_id()
    st, _, before = srv.json("PUT", f"/v1/sessions/{sid}",
                             session_body(participants=["keep-p"]))
    for body in ({"topic": 5}, {"topic": "t", "status": "active"},
                 {"topic": "t", "participants": ["gone-p"], "nope": 1}):
        st, _, err = srv.json("PUT", f"/v1/sessions/{sid}", body)
        assert_error(st, err, 400)
    st, _, after = srv.json("GET", f"/v1/sessions/{sid}")
    assert fields(after) == fields(before)
    st, _, page = srv.json("GET", "/v1/sessions?participant=gone-p")
    assert sid not in [i["id"] for i in page["items"]]


@pytest.mark.parametrize("path_id", ["a%20b", "x" * 129, "%C3%A9t%C3%A9", "a%00b"],
                         ids=["space", "129 chars", "non-ascii", "nul"])
def test_bad_path_id_400(srv, path_id):
    st, _, err = srv.json("PUT", f"/v1/sessions/{path_id}", session_body())
    assert_error(st, err, 400, mentions="id")
    st, _, err = srv.json("GET", f"/v1/sessions/{path_id}")
    assert_error(st, err, 400, mentions="id")


def test_path_id_of_128_chars_is_fine(srv):
    sid = "y" * 120 + uuid.uuid4().hex[:8]
    assert len(sid) == 128
    st, _, rec = srv.json("PUT", f"/v1/sessions/{sid}", session_body())
    assert st == 201 and rec["id"] == sid


BAD_MESSAGES = [
    ("priority", message_body("m", priority="Urgent"), "priority"),
    ("no id", {k: v for k, v in message_body("m").items() if k != "id"}, "id"),
    ("sender", message_body("m", sender_id="a b"), "sender_id"),
    ("recipients", message_body("m", recipient_ids="bob"), "recipient_ids"),
    ("content", message_body("m", content=7), "content"),
    ("timestamp", message_body("m", timestamp="noon"), "timestamp"),
    ("requires_ack", message_body("m", requires_ack="yes"), "requires_ack"),
    ("metadata", message_body("m", metadata={"n": 1}), "metadata"),
    ("unknown", message_body("m", colour="red"), "colour"),
    ("array", [message_body("m")], "body"),
]


@pytest.mark.parametrize("what,body,field", BAD_MESSAGES, ids=[b[0] for b in BAD_MESSAGES])
def test_bad_message_400_names_field_session_unchanged(srv, what, body, field):
    sid = new_id()
    st, _, before = srv.json("PUT", f"/v1/sessions/{sid}", session_body())
    st, _, err = srv.json("POST", f"/v1/sessions/{sid}/messages", body)
    assert_error(st, err, 400, mentions=field)
    st, _, after = srv.json("GET", f"/v1/sessions/{sid}")
    assert after["messages"] == [] and after["version"] == before["version"]


@pytest.mark.parametrize("query,field", [
    ("colour=red", "colour"),
    ("limit=0", "limit"),
    ("limit=abc", "limit"),
    ("limit=-1", "limit"),
    ("limit=1000000", "limit"),
    ("status=active", "status"),
    ("participant=a%20b", "participant"),
    ("cursor=a%20b", "cursor"),
], ids=["unknown", "limit0", "limit-abc", "limit-neg", "limit-huge", "status", "participant",
        "cursor"])
def test_bad_list_parameter_400(srv, query, field):
    st, _, err = srv.json("GET", f"/v1/sessions?{query}")
    assert_error(st, err, 400, mentions=field)


# ---- HTTP-level behaviour (memory backend is enough) ----

def test_body_over_max_request_size_413(daemons):
    d = daemons(overrides=["service.max_request_size_bytes=2048"]).start()
    sid = new_id()
    big = session_body(topic="t", decisions=[{"pad": "z" * 4000}])
    r = d.request("PUT", f"/v1/sessions/{sid}", big)
    assert r.status == 413
    assert d.request("GET", f"/v1/sessions/{sid}").status == 404
    small = session_body(decisions=[{"pad": "z" * 1000}])
    assert d.request("PUT", f"/v1/sessions/{sid}", small).status == 201


def test_unknown_route_404_json(mem):
    for path in ("/v1/nope", "/", "/v1/sessionsx", "/v1/sessions/a/b", "/health/x"):
        st, h, err = mem.json("GET", path)
        assert_error(st, err, 404, "not_found")
        assert h.get("Content-Type", "").startswith("application/json")


@pytest.mark.parametrize("method,path,allowed", [
    ("POST", "/v1/sessions/x", {"GET", "PUT", "PATCH", "DELETE"}),
    ("PATCH", "/v1/sessions/x/messages", {"POST"}),
    ("DELETE", "/v1/sessions", {"GET"}),
    ("GET", "/v1/sessions/x/messages", {"POST"}),
    ("POST", "/health", {"GET"}),
])
def test_wrong_method_405_with_allow(mem, method, path, allowed):
    st, h, err = mem.json(method, path, b"{}" if method in ("POST", "PATCH") else None)
    assert_error(st, err, 405)
    allow = {m.strip() for m in (h.get("Allow") or "").split(",")}
    assert allowed <= allow, f"Allow: {h.get('Allow')!r}"
    assert method not in allow


def test_cors_default_allows_no_other_origin(mem):
    r = mem.request("GET", "/health/live", headers={"Origin": "http://x"})
    assert r.status == 200
    assert r.headers.get("Access-Control-Allow-Origin") is None, r.headers
    r = mem.request("GET", "/health/live")
    assert r.headers.get("Access-Control-Allow-Origin") is None, "CORS without Origin"


def cors_daemon(daemons, origins):
    listed = ", ".join(f'"{o}"' for o in origins)
    return daemons(config=memory_config() +
                   f"service: {{ cors: {{ origins = [ {listed} ]; }}; }};\n").start()


def test_cors_preflight_204(daemons):
    d = cors_daemon(daemons, ["*"])
    r = d.request("OPTIONS", "/v1/sessions/abc",
                  headers={"Origin": "http://x", "Access-Control-Request-Method": "PUT",
                           "Access-Control-Request-Headers": "Content-Type, If-Match"})
    assert r.status == 204
    assert r.headers.get("Access-Control-Allow-Origin") == "*"
    methods = {m.strip() for m in (r.headers.get("Access-Control-Allow-Methods") or "").split(",")}
    assert {"GET", "PUT", "DELETE"} <= methods, r.headers
    assert "if-match" in (r.headers.get("Access-Control-Allow-Headers") or "").lower()
    assert d.request("GET", "/v1/sessions/abc").status == 404, "preflight stored something"


@pytest.mark.parametrize("method,path,body", [
    ("PUT", "/v1/sessions/csrf", {"topic": "t", "participants": ["a"]}),
    ("POST", "/v1/sessions/csrf/messages", {"id": "m1", "message_type": "Info",
                                            "sender_id": "a", "content": "x"}),
    ("DELETE", "/v1/sessions/keep", None),
    ("PUT", "/v1/agents/csrf", {"name": "a", "agent_type": "x"}),
])
def test_cross_origin_write_from_a_disallowed_origin_is_403_and_changes_nothing(
        daemons, method, path, body):
    d = cors_daemon(daemons, ["https://console.example"])
    assert d.json("PUT", "/v1/sessions/keep", {"topic": "k", "participants": ["a"]})[0] == 201
    # a "simple" request a web page can send without a preflight
    st, h, err = d.json(method, path, body,
                        headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
    assert_error(st, err, 403)
    assert "http://evil.example" in err["error"]["message"]
    assert d.request("GET", "/v1/sessions/csrf").status == 404
    assert d.request("GET", "/v1/agents/csrf").status == 404
    assert d.request("GET", "/v1/sessions/keep").status == 200
    # the default (no origins listed) refuses it the same way
    assert d.json("GET", "/v1/sessions/keep",
                  headers={"Origin": "http://evil.example"})[0] == 200, "reads are not refused"


def test_cross_origin_write_from_an_allowed_or_the_same_origin_runs(daemons):
    d = cors_daemon(daemons, ["https://console.example"])
    r = d.request("PUT", "/v1/sessions/ok", {"topic": "t", "participants": ["a"]},
                  headers={"Origin": "https://console.example"})
    assert r.status == 201, r.body
    assert r.headers.get("Access-Control-Allow-Origin") == "https://console.example"
    assert "Origin" in (r.headers.get("Vary") or "")
    r = d.request("PUT", "/v1/sessions/same", {"topic": "t", "participants": ["a"]},
                  headers={"Origin": f"http://127.0.0.1:{d.port}"})
    assert r.status == 201, r.body
    # no Origin at all: not a browser, not CORS's business
    assert d.request("PUT", "/v1/sessions/cli", {"topic": "t", "participants": ["a"]}).status == 201


def test_default_config_refuses_cross_origin_writes(mem):
    st, _, err = mem.json("PUT", "/v1/sessions/x", {"topic": "t", "participants": ["a"]},
                          headers={"Origin": "http://localhost:3000"})
    assert_error(st, err, 403)
    assert mem.request("GET", "/v1/sessions/x").status == 404


def test_cors_disabled_sends_no_cors_headers(daemons):
    d = daemons(overrides=["service.cors.enabled=false"]).start()
    r = d.request("GET", "/health/live", headers={"Origin": "http://x"})
    assert r.status == 200
    assert not [k for k in r.headers if k.lower().startswith("access-control-")], r.headers
    r = d.request("OPTIONS", "/v1/sessions/abc",
                  headers={"Origin": "http://x", "Access-Control-Request-Method": "PUT"})
    assert not [k for k in r.headers if k.lower().startswith("access-control-")], r.headers


def test_request_id_echoed_generated_and_logged(mem):
    mine = f"client-{uuid.uuid4().hex[:12]}"
    r = mem.request("GET", "/health/live", headers={"X-Request-Id": mine})
    assert r.headers.get("X-Request-Id") == mine
    r1 = mem.request("GET", "/health/live")
    r2 = mem.request("GET", "/health/live")
    g1, g2 = r1.headers.get("X-Request-Id"), r2.headers.get("X-Request-Id")
    assert g1 and g2 and g1 != g2 and mine not in (g1, g2)
    bad = "not valid!"
    r3 = mem.request("GET", "/health/live", headers={"X-Request-Id": bad})
    g3 = r3.headers.get("X-Request-Id")
    assert g3 and g3 != bad
    r4 = mem.request("GET", "/health/live", headers={"X-Request-Id": "z" * 200})
    assert r4.headers.get("X-Request-Id") not in (None, "z" * 200)
    for rid in (mine, g1, g2, g3):
        assert mem.wait_log(rid, timeout=5), f"request id {rid} not in the access log"
    line = [ln for ln in mem.log().splitlines() if mine in ln][0]
    assert "/health/live" in line and "200" in line


def test_health_endpoints(srv):
    st, h, body = srv.json("GET", "/health")
    assert st == 200
    assert body["status"] == "ok" and body["backend"] == srv.backend
    st, _, body = srv.json("GET", "/health/live")
    assert st == 200 and body
    st, _, body = srv.json("GET", "/health/ready")
    assert st == 200 and body


def test_plugins_lists_storage_plugin(srv):
    st, _, body = srv.json("GET", "/v1/plugins")
    assert st == 200
    mine = [p for p in body["items"] if p["name"] == srv.backend]
    assert len(mine) == 1, body
    p = mine[0]
    assert p["kind"] == "storage"
    assert isinstance(p["version"], str) and p["version"]
    assert re.fullmatch(r"2\.\d+", p["abi"]), p
    assert p.get("active") is True
    if srv.backend == "sqlite":
        assert "durable" in p.get("features", [])


def test_dot_ids_stay_inside_the_file_backend_directory(daemons, tmp_path):
    """
    Ids may hold '.', so "..", "." and "..." are valid ids: on the file
    backend each is one record file inside its namespace directory, never a
    path that climbs out of it (issue 16, item 3).
    """
    data = tmp_path / "data"
    d = daemons(config=f'persistence: {{ backend = "file"; file = {{ directory = "{data}"; }}; }};\n')
    d.start()
    before = sorted(p.name for p in tmp_path.iterdir())
    for sid, raw in (("..", "%2E%2E"), (".", "."), ("...", "..."), ("..a", "..a")):
        st, _, body = d.json("PUT", f"/v1/sessions/{raw}", {"topic": sid, "participants": ["a"]})
        assert st == 201, (sid, body)
        st, _, body = d.json("GET", f"/v1/sessions/{raw}")
        assert st == 200 and body["topic"] == sid and body["id"] == sid, body
    # nothing appeared beside the data directory, nothing inside it is a dot name
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    for p in data.rglob("*"):
        assert not p.name.startswith("."), p
    assert d.stop() == 0
    d.start()
    assert d.json("GET", "/v1/sessions/%2E%2E")[2]["topic"] == ".."
