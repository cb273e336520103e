"""
Agent inboxes (issue 12, item 3): GET /v1/agents/{id}/inbox and
POST /v1/sessions/{sid}/messages/{mid}/ack -- at-least-once delivery with
ack, redelivery after the visibility timeout, expiry (never delivered,
removed by the maintenance pass), priority order, concurrent consumers of
one inbox, delivery once without requires_ack, a waiting poll woken by an
append (on the same node and on another node sharing SQLite), the ack's
404 and 409, and a deleted or Failed agent's in-flight messages visible
again.

Run on memory, file and SQLite; PostgreSQL and Redis when their servers
and plugins are installed (test_events' backend fixture).
"""
import datetime
import sqlite3
import threading
import time

import pytest

from conftest import Daemon, memory_config, rss_kb, sqlite_config, wait_until
from test_events import backend, put_session  # noqa: F401  (the fixture)


def now_iso(offset_s=0.0):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_s)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def send(d, sid, mid, recipients=("worker",), priority="Normal", requires_ack=True,
         expires_at=None, sender="boss"):
    body = {"id": mid, "message_type": "TaskAssignment", "priority": priority,
            "sender_id": sender, "recipient_ids": list(recipients), "content": mid,
            "requires_ack": requires_ack}
    if expires_at:
        body["expires_at"] = expires_at
    r = d.request("POST", f"/v1/sessions/{sid}/messages", body)
    assert r.status in (200, 201), r.body
    return r


def inbox(d, agent="worker", query="", timeout=20):
    r = d.request("GET", f"/v1/agents/{agent}/inbox" + (f"?{query}" if query else ""),
                  timeout=timeout)
    assert r.status == 200, r.body
    return r.json()["items"]


def ids(items):
    return [i["message"]["id"] for i in items]


def ack(d, sid, mid, agent="worker"):
    return d.request("POST", f"/v1/sessions/{sid}/messages/{mid}/ack", {"agent_id": agent})


@pytest.fixture
def node(daemons, backend):  # noqa: F811
    return daemons(config=backend()).start()


def test_at_least_once_with_ack(node):
    put_session(node, "s1")
    send(node, "s1", "m1")
    got = inbox(node)
    assert ids(got) == ["m1"]
    assert got[0]["delivery"] == 1 and got[0]["ack_required"] is True
    assert got[0]["session_id"] == "s1" and "invisible_until" in got[0]
    assert inbox(node) == []              # invisible while held
    r = ack(node, "s1", "m1")
    assert r.status == 204, r.body
    r = ack(node, "s1", "m1")             # already acked
    assert r.status == 404, r.body
    # the ack is in the change feed
    r = node.request("GET", "/v1/events?since=0&types=message.acked&wait=5s", timeout=20)
    assert r.status == 200, r.body
    evs = r.json()["items"]
    assert [(e["type"], e["id"], e["session"], e["agent"]) for e in evs] == \
        [("message.acked", "m1", "s1", "worker")], evs
    # a re-sent identical message adds nothing
    send(node, "s1", "m1")
    assert inbox(node) == []


def test_redelivery_after_visibility_timeout(node):
    put_session(node, "s1")
    send(node, "s1", "m1")
    first = inbox(node, query="visibility=1")
    assert ids(first) == ["m1"]
    assert inbox(node) == []
    again = []
    assert wait_until(lambda: again.extend(inbox(node, query="visibility=1")) or again, 10)
    assert ids(again) == ["m1"] and again[0]["delivery"] == 2
    assert ack(node, "s1", "m1").status == 204


def test_no_ack_delivered_once_and_ack_refused(node):
    put_session(node, "s1")
    send(node, "s1", "m1", requires_ack=False)
    r = ack(node, "s1", "m1")             # not delivered yet, not an ack message
    assert r.status == 409, r.body
    got = inbox(node)
    assert ids(got) == ["m1"] and got[0]["ack_required"] is False
    assert "invisible_until" not in got[0]
    assert inbox(node) == []
    time.sleep(0.2)
    assert inbox(node, query="visibility=1") == []
    assert ack(node, "s1", "m1").status == 404   # nothing left to ack


def test_ack_cases(node):
    put_session(node, "s1")
    send(node, "s1", "m1", recipients=("worker", "other"))
    assert ack(node, "s1", "m1").status == 404            # not delivered yet
    assert ack(node, "s1", "m1", agent="stranger").status == 404
    assert ack(node, "s1", "nope").status == 404
    assert ids(inbox(node)) == ["m1"]
    assert ack(node, "s1", "m1", agent="other").status == 404  # other's copy not delivered
    assert ack(node, "s1", "m1").status == 204
    assert ids(inbox(node, agent="other")) == ["m1"]      # each recipient its own copy
    r = node.request("POST", "/v1/sessions/s1/messages/m1/ack", {"agent_id": "bad id"})
    assert r.status == 400, r.body
    r = node.request("POST", "/v1/sessions/s1/messages/m1/ack", {"agent_id": "worker", "x": 1})
    assert r.status == 400, r.body
    r = node.request("GET", "/v1/agents/worker/inbox?limit=0")
    assert r.status == 400, r.body
    r = node.request("GET", "/v1/agents/worker/inbox?visibility=43201")
    assert r.status == 400, r.body


def test_priority_order(node):
    put_session(node, "s1")
    for mid, p in [("low", "Low"), ("n1", "Normal"), ("emer", "Emergency"), ("high", "High"),
                   ("n2", "Normal"), ("crit", "Critical")]:
        send(node, "s1", mid, priority=p, requires_ack=False)
    assert ids(inbox(node, query="limit=100")) == ["emer", "crit", "high", "n1", "n2", "low"]


def test_expiry(node):
    put_session(node, "s1")
    send(node, "s1", "gone", expires_at=now_iso(0.5))
    send(node, "s1", "kept", expires_at=now_iso(3600))
    time.sleep(0.8)
    assert ids(inbox(node, query="limit=10")) == ["kept"]
    assert ack(node, "s1", "gone").status == 404


def test_expired_removed_by_maintenance(daemons, tmp_path):
    db = tmp_path / "inbox.db"
    d = daemons(config=sqlite_config(db) +
                "coordination: { event_poll_ms = 20; event_retention_seconds = 2; };\n").start()
    put_session(d, "s1")
    send(d, "s1", "gone", expires_at=now_iso(0.3))
    send(d, "s1", "kept")

    def inbox_rows():
        c = sqlite3.connect(str(db), timeout=10)
        try:
            tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            n = 0
            for t in tables:
                cols = [r[1] for r in c.execute(f'PRAGMA table_info("{t}")')]
                if "ns" in cols:
                    n += c.execute(f'SELECT count(*) FROM "{t}" WHERE ns IN (?, ?)',
                                   ("inbox", "inbox.ack")).fetchone()[0]
            return n
        finally:
            c.close()
    assert inbox_rows() == 4   # two entries, two index entries
    assert wait_until(lambda: inbox_rows() == 2, 15)
    assert ids(inbox(d)) == ["kept"]


def test_concurrent_consumers_never_share(node):
    put_session(node, "s1")
    n = 20
    for i in range(n):
        send(node, "s1", f"m{i:02d}")
    held = {}          # message id -> consumer holding it
    lock = threading.Lock()
    errors = []
    delivered = []

    def consumer(name):
        try:
            for _ in range(15):
                for item in inbox(node, query="limit=3&visibility=60"):
                    mid = item["message"]["id"]
                    with lock:
                        if mid in held:
                            errors.append(f"{mid} held by {held[mid]} and {name}")
                        held[mid] = name
                        delivered.append(mid)
                    r = ack(node, "s1", mid)
                    with lock:
                        held.pop(mid, None)
                    if r.status != 204:
                        errors.append(f"ack {mid} by {name}: {r.status}")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=consumer, args=(f"c{k}",)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(delivered) == [f"m{i:02d}" for i in range(n)]   # each once, none lost


def test_wait_woken_by_append(node):
    put_session(node, "s1")
    out = {}

    def waiter():
        t0 = time.monotonic()
        out["items"] = inbox(node, query="wait=20s", timeout=30)
        out["took"] = time.monotonic() - t0

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.5)
    send(node, "s1", "late", sender="boss")
    t.join(30)
    assert ids(out["items"]) == ["late"]
    assert out["took"] < 19        # woken, not the deadline


def test_wait_deadline_empty(node):
    t0 = time.monotonic()
    assert inbox(node, query="wait=1s") == []
    assert time.monotonic() - t0 >= 0.9


def test_wait_on_another_node(daemons, tmp_path):
    db = tmp_path / "shared.db"
    conf = sqlite_config(db) + "coordination: { event_poll_ms = 20; };\n"
    a = daemons(name="a", config=conf).start()
    b = daemons(name="b", config=conf).start()
    put_session(a, "s1")
    out = {}
    t = threading.Thread(target=lambda: out.update(items=inbox(b, query="wait=20s",
                                                               timeout=30)))
    t.start()
    time.sleep(0.5)
    send(a, "s1", "remote")
    t.join(30)
    assert ids(out["items"]) == ["remote"]


def test_deleted_agent_messages_visible_again(node):
    r = node.request("PUT", "/v1/agents/worker",
                     {"name": "w", "agent_type": "worker", "capabilities": []})
    assert r.status in (200, 201), r.body
    put_session(node, "s1")
    send(node, "s1", "m1")
    assert ids(inbox(node, query="visibility=3600")) == ["m1"]
    assert inbox(node) == []
    r = node.request("DELETE", "/v1/agents/worker")
    assert r.status == 204, r.body
    got = inbox(node)          # a replacement instance (or a supervisor) takes it
    assert ids(got) == ["m1"] and got[0]["delivery"] == 2


def test_failed_agent_messages_visible_again(daemons):
    """An agent Failed by its task timeout (rhema_agent_transition): its
    delivered, unacknowledged messages are visible again at once."""
    d = daemons(config=memory_config() + "coordination: { event_poll_ms = 20; };\n",
                overrides=["ai_service.agent_management.agent_timeout_seconds=1"]).start()
    put_session(d, "s1")
    send(d, "s1", "m1")
    send(d, "s1", "m2", requires_ack=False)
    assert ids(inbox(d, query="visibility=3600")) == ["m1", "m2"]  # m2 (no ack) consumed
    assert inbox(d) == []
    # the agent takes a task and runs out of time (a far heartbeat: only the task times out)
    r = d.request("PUT", "/v1/agents/worker",
                  {"name": "w", "agent_type": "worker", "capabilities": [], "status": "Busy",
                   "current_task_id": "t1", "last_heartbeat": "2999-01-01T00:00:00Z"})
    assert r.status == 201, r.body

    def failed():
        s, _, a = d.json("GET", "/v1/agents/worker")
        return a.get("status") == "Failed"
    assert wait_until(failed, 30, step=0.1)
    got = inbox(d)
    assert ids(got) == ["m1"] and got[0]["delivery"] == 2


def test_feed_off_refused(daemons):
    d = daemons(config=memory_config() + "coordination: { change_feed = false; };\n").start()
    put_session(d, "s1")
    send(d, "s1", "m1")
    r = d.request("GET", "/v1/agents/worker/inbox")
    assert r.status == 503 and b"change_feed" in r.body, r.body
    r = ack(d, "s1", "m1")
    assert r.status == 503 and b"change_feed" in r.body, r.body


def test_fan_out_costs_one_message_per_recipient(daemons):
    """A message to n recipients stores n entries of one message each, not n
    copies of the n-id recipient list: eight messages to 1024 recipients with
    128-character ids (130 KiB of ids each) leave rhemad's RSS well under what
    n^2 would take (8 x 1024 x 130 KiB = 1 GiB); each recipient gets the
    message, without the list."""
    d = daemons(config=memory_config()).start()
    put_session(d, "fan")
    recipients = [f"agent-{i:04d}-" + "r" * 117 for i in range(1024)]
    before = rss_kb(d.pid)
    for i in range(8):
        send(d, "fan", f"m{i}", recipients=recipients, requires_ack=False)
    grown = rss_kb(d.pid) - before
    assert grown < 150 * 1024, f"RSS grew by {grown} KiB"
    for agent in (recipients[0], recipients[-1]):
        got = inbox(d, agent=agent, query="limit=100")
        assert ids(got) == [f"m{i}" for i in range(8)]
        assert all("recipient_ids" not in g["message"] for g in got), got[0]
        assert got[0]["message"]["content"] == "m0" and got[0]["message"]["sender_id"] == "boss"


def test_recipient_list_is_bounded(daemons):
    """recipient_ids holds at most 1024 ids, none twice (doc/http-api.md): a
    longer or repeated list is a 400 naming the field, and nothing of the
    message is written -- not in the session, not in any inbox."""
    d = daemons(config=memory_config()).start()
    put_session(d, "lim")
    for recipients, word in (([f"a{i}" for i in range(1025)], "at most 1024"),
                             (["a1", "a2", "a1"], "duplicate id 'a1'")):
        r = d.request("POST", "/v1/sessions/lim/messages",
                      {"id": "m", "message_type": "T", "sender_id": "boss",
                       "recipient_ids": recipients, "content": "x"})
        assert r.status == 400, r.body
        assert b"recipient_ids" in r.body and word.encode() in r.body, r.body
    r = d.request("GET", "/v1/sessions/lim")
    assert r.status == 200 and r.json()["messages"] == [], r.body
    assert inbox(d, agent="a1") == [] and inbox(d, agent="a0") == []
    send(d, "lim", "ok", recipients=[f"a{i}" for i in range(1024)], requires_ack=False)
    assert ids(inbox(d, agent="a1023")) == ["ok"]
