"""
Backend faults (issue 3, item 5): the PostgreSQL or Redis server goes away
under traffic and comes back, and rhemad -- never restarted -- must

  - answer every request either with a success whose effect is there later,
    or with 503 {"error":{"code":"unavailable",...}} (never a 2xx for a write
    that did not happen, never a hang or a dropped connection);
  - turn /health/ready to 503 and /health to "unhealthy" while the server is
    down;
  - reconnect by itself once the server is back: writes succeed again and
    /health/ready answers 200 within RECOVERY_TIMEOUT;
  - still hold every acknowledged write, at the acknowledged version, after
    the outage.

Each backend is tested with a clean stop (pg_ctl -m fast, SIGTERM) and with
a crash (pg_ctl -m immediate, SIGKILL) of the server, which then restarts on
the same data directory and port.
"""

import http.client
import itertools
import json
import random
import threading
import time
import uuid

import pytest

from conftest import (after_append, append_problem, etag_version, same_record, session_problem,
                      strip, wait_until)

RECOVERY_TIMEOUT = 15.0   # server back -> writes succeed and ready is 200
DOWN_TIMEOUT = 5.0        # server gone -> ready is 503
UP_BEFORE = 1.0           # seconds of traffic before the outage
DOWN_FOR = 2.0            # seconds of traffic while the server is down
UP_AFTER = 1.5            # seconds of traffic after recovery
THREADS = 3
POOL = 20                 # sessions per traffic thread
NET_ERRORS = (OSError, http.client.HTTPException)


class Track:
    """One session as the traffic saw it."""
    __slots__ = ("id", "acked", "known", "history")

    def __init__(self, sid):
        self.id = sid
        self.acked = None   # (version, stripped record) of the last 2xx write
        self.known = None   # the version to send in If-Match (acked or read back)
        self.history = []   # after the last ack: (token, outcome) of writes not acknowledged


class Traffic(threading.Thread):
    """PUT (create, update with If-Match), POST message and GET, in a loop, on own ids."""

    def __init__(self, d, k, tag, seq, stop):
        super().__init__(daemon=True)
        self.d, self.stop, self.seq = d, stop, seq
        self.sessions = [Track(f"{tag}-t{k}-{i:02d}") for i in range(POOL)]
        self.events = []       # (t_start, t_end, kind, status, sid)
        self.problems = []     # answers that break the contract
        self.net_errors = []
        self.error = None

    # -- bookkeeping --
    def note(self, t0, kind, status, sid):
        self.events.append((t0, time.monotonic(), kind, status, sid))

    def problem(self, text):
        if len(self.problems) < 30:
            self.problems.append(text)

    def check_503(self, kind, sid, r):
        try:
            err = json.loads(r.body)["error"]
            ok = err["code"] == "unavailable" and isinstance(err["message"], str) \
                and err["message"]
        except (ValueError, KeyError, TypeError):
            ok, err = False, r.body[:200]
        if not ok:
            self.problem(f"{kind} {sid}: 503 without an 'unavailable' error body: {err!r}")
        return err.get("message", "") if isinstance(err, dict) else ""

    def run(self):
        conn = self.d.connection(timeout=20)
        rng = random.Random(self.sessions[0].id)
        try:
            while not self.stop.is_set():
                live = [s for s in self.sessions if s.known is not None]
                new = [s for s in self.sessions if s.known is None]
                r = rng.random()
                if new and (len(live) < 5 or r < 0.15):
                    s, kind = rng.choice(new), "create"
                elif r < 0.55:
                    s, kind = rng.choice(live), "update"
                elif r < 0.75:
                    s, kind = rng.choice(live), "message"
                else:
                    s, kind = rng.choice(live), "get"
                try:
                    status = self.one(conn, s, kind)
                except NET_ERRORS as e:
                    self.net_errors.append(f"{kind} {s.id}: {type(e).__name__}: {e}")
                    if kind != "get":
                        s.history.append((None, "no answer"))
                    conn.close()
                    conn = self.d.connection(timeout=20)
                    status = None
                if status == 503:
                    time.sleep(0.005)  # do not spin while the backend is down
        except Exception as e:
            self.error = e
        finally:
            conn.close()

    def one(self, conn, s, kind):
        d = self.d
        path = f"/v1/sessions/{s.id}"
        token = f"{s.id} #{next(self.seq)}"
        t0 = time.monotonic()
        if kind == "get":
            r = d.request("GET", path, conn=conn)
            self.note(t0, kind, r.status, s.id)
            if r.status == 200:
                rec = json.loads(r.body)
                problem = session_problem(rec, s.id)
                if problem:
                    self.problem(f"GET {s.id}: malformed record: {problem}")
                elif s.acked and rec["version"] < s.acked[0]:
                    self.problem(f"GET {s.id}: version {rec['version']} is older than the "
                                 f"acknowledged {s.acked[0]}")
                elif not s.history and s.acked and not same_record(strip(rec), s.acked[1]):
                    self.problem(f"GET {s.id}: the record differs from the acknowledged one")
                else:
                    s.known = max(s.known or 0, rec["version"])
            elif r.status == 503:
                self.check_503(kind, s.id, r)
            else:
                self.problem(f"GET {s.id}: {r.status} {r.body[:200]!r}")
            return r.status
        if kind == "message":
            body = {"id": token.replace(" #", "-m"), "message_type": "note", "sender_id": "a",
                    "content": token}
            r = d.request("POST", path + "/messages", body, conn=conn)
            want = 201
        else:
            body = {"topic": token, "participants": ["a", "b"], "status": "Active"}
            hdr = {"If-None-Match": "*"} if kind == "create" else {"If-Match": f'"{s.known}"'}
            r = d.request("PUT", path, body, headers=hdr, conn=conn)
            want = 201 if kind == "create" else 200
        self.note(t0, kind, r.status, s.id)
        if r.status == want:
            rec = json.loads(r.body)
            if kind == "message":
                problem = append_problem(rec, s.id)
                known = s.acked[1] if s.acked and not s.history else None
                new = None if problem else after_append(known, rec)
            else:
                problem = session_problem(rec, s.id)
                new = None if problem else strip(rec)
            if problem or etag_version(r.headers) != rec["version"]:
                self.problem(f"{kind} {s.id}: bad success reply: {problem or 'ETag'}")
                return r.status
            s.acked = (rec["version"], new)
            s.known = rec["version"]
            s.history = []
        elif r.status == 503:
            msg = self.check_503(kind, s.id, r)
            s.history.append((token, "unknown" if "unknown" in msg else "refused"))
        elif r.status == 412:
            # only after a write whose outcome was not known to us: resynchronise
            if not s.history:
                self.problem(f"{kind} {s.id}: 412 although nobody else writes it and every "
                             f"earlier write was answered: {r.body[:200]!r}")
            g = d.request("GET", path, conn=conn)
            if g.status == 200:
                s.known = json.loads(g.body)["version"]
        else:
            self.problem(f"{kind} {s.id}: {r.status} {r.body[:200]!r}")
        return r.status


def _verify(d, traffic):
    """Every acknowledged write is there; a newer version is a write we were not told about."""
    problems, applied_after_503 = [], []
    conn = d.connection()
    try:
        for t in traffic:
            for s in t.sessions:
                if s.acked is None and not s.history:
                    continue
                st, _, rec = d.json("GET", f"/v1/sessions/{s.id}", conn=conn)
                if s.acked is None:
                    if st == 200:
                        applied_after_503.append((s.id, rec["topic"], s.history))
                    continue
                if st != 200:
                    problems.append(f"LOST {s.id}: acknowledged version {s.acked[0]}, GET {st}")
                    continue
                v = rec["version"]
                if v == s.acked[0]:
                    if not same_record(strip(rec), s.acked[1]):
                        problems.append(f"CHANGED {s.id}: version {v} is not the acknowledged "
                                        f"record")
                elif v < s.acked[0]:
                    problems.append(f"LOST {s.id}: version {v}, acknowledged {s.acked[0]}")
                elif not s.history:
                    problems.append(f"{s.id}: version {v} is newer than the acknowledged "
                                    f"{s.acked[0]} and no write went unanswered")
                else:
                    applied_after_503.append((s.id, rec["topic"], s.history))
    finally:
        conn.close()
    # a write answered 503 whose message did not call its outcome unknown must not
    # have happened: its token would be the record's topic
    for sid, topic, history in applied_after_503:
        for token, outcome in history:
            if token is not None and token == topic and outcome == "refused":
                problems.append(f"{sid}: a PUT answered 503 (not 'outcome unknown') was "
                                f"applied: {topic!r}")
    return problems, len(applied_after_503)


def _ready(d):
    try:
        return d.request("GET", "/health/ready", timeout=5).status
    except NET_ERRORS:
        return None


def _health(d):
    try:
        st, _, body = d.json("GET", "/health")
        return body if st == 200 else {"status": f"HTTP {st}"}
    except NET_ERRORS:
        return {}


@pytest.mark.parametrize("mode", ["stop", "crash"])
@pytest.mark.parametrize("backend_server", ["postgres", "redis"], indirect=True)
def test_outage_under_traffic(backend_server, mode, daemons, fault_report):
    srv = backend_server
    d = daemons(config=srv.rhema_config(), workers=2).start()
    pid = d.pid
    assert _ready(d) == 200, f"/health/ready before the outage: {_ready(d)}"
    tag, seq, stop = f"f{uuid.uuid4().hex[:6]}", itertools.count(), threading.Event()
    traffic = [Traffic(d, k, tag, seq, stop) for k in range(THREADS)]
    for t in traffic:
        t.start()
    try:
        time.sleep(UP_BEFORE)

        # ---- the server goes away ----
        t_down = time.monotonic()
        srv.crash() if mode == "crash" else srv.stop()
        assert wait_until(lambda: _ready(d) == 503, DOWN_TIMEOUT, 0.05), \
            f"/health/ready still answers {_ready(d)} {DOWN_TIMEOUT} s after the server stopped"
        health = _health(d)
        # the storage component is Unhealthy, and the overall status follows it
        assert health.get("status") == "unhealthy" and health.get("storage") == "unavailable", \
            f"/health while the backend is down: {health}"
        assert health.get("storage_error"), f"/health names no storage error: {health}"
        time.sleep(DOWN_FOR)
        assert _ready(d) == 503

        # ---- it comes back on the same data and port ----
        t_up = time.monotonic()
        srv.restart()
        t_started = time.monotonic()

        def write_ok():
            return any(e[0] >= t_started and e[2] != "get" and e[3] in (200, 201)
                       for t in traffic for e in list(t.events))
        assert wait_until(write_ok, RECOVERY_TIMEOUT, 0.05), \
            f"no write succeeded within {RECOVERY_TIMEOUT} s of the server's return"
        t_write = time.monotonic()
        # every worker has its own connection: ready must hold, not flicker
        assert wait_until(lambda: all(_ready(d) == 200 for _ in range(6)),
                          RECOVERY_TIMEOUT, 0.05), \
            f"/health/ready not 200 within {RECOVERY_TIMEOUT} s of the server's return"
        t_ready = time.monotonic()
        assert wait_until(lambda: _health(d).get("status") == "ok", RECOVERY_TIMEOUT, 0.05), \
            f"/health after recovery: {_health(d)}"
        time.sleep(UP_AFTER)
    finally:
        stop.set()
        for t in traffic:
            t.join(30)
    for t in traffic:
        assert not t.is_alive(), "a traffic thread hung"
        if t.error is not None:
            raise t.error
    assert d.running() and d.pid == pid, "rhemad exited or was restarted during the outage"

    events = [e for t in traffic for e in t.events]
    problems = [p for t in traffic for p in t.problems]
    net = [n for t in traffic for n in t.net_errors]
    lost, applied = _verify(d, traffic)
    writes = [e for e in events if e[2] != "get"]
    acked = sum(e[3] in (200, 201) for e in writes)
    down_2xx = [e for e in writes if e[0] > t_down + 0.5 and e[1] < t_up and e[3] in (200, 201)]
    n503 = sum(e[3] == 503 for e in events)
    fault_report(f"{srv.name} {mode}: {len(events)} requests, {acked} writes acknowledged, "
                 f"{n503} answered 503, {len(net)} without an answer, {applied} sessions "
                 f"changed by a write answered 503; writes again {t_write - t_up:.2f} s and "
                 f"ready {t_ready - t_up:.2f} s after the restart began (server up after "
                 f"{t_started - t_up:.2f} s); {len(lost)} problems after recovery")
    assert not problems, "answers that break the contract:\n  " + "\n  ".join(problems[:20])
    assert not net, "requests without an answer (rhemad must answer 503):\n  " + \
        "\n  ".join(net[:10])
    assert not down_2xx, f"{len(down_2xx)} writes acknowledged while the server was down"
    assert n503 > 0, "no request was answered 503 during the outage"
    assert not lost, "after recovery:\n  " + "\n  ".join(lost[:20])
    assert acked > 0 and any(e[0] > t_ready and e[3] in (200, 201) for e in writes), \
        "no write was acknowledged after recovery"
