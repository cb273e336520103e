"""
Crash safety (issue 3, item 6): writers hammer rhemad with session writes
(and consensus log appends when that API exists), rhemad is killed with
SIGKILL at a random moment, restarted on the same data, and every write it
acknowledged must be there, intact.

Per durable backend (file, sqlite with synchronous=full, postgres, redis
with appendfsync always), RHEMA_CRASH_CYCLES cycles (default 5; the full
run is 50).  Each cycle:
  - start rhemad on the backend's data;
  - WRITERS threads, each owning POOL session ids, run as fast as they can:
    create (PUT, If-None-Match: *), update (PUT, If-Match: the last
    acknowledged version), append a message (POST .../messages), delete
    (DELETE, If-Match), read back (GET, which must equal the last
    acknowledged record); a consensus thread appends log entries one by one;
  - SIGKILL after 0.2-1.5 s (on postgres and redis, every fifth cycle the
    server is crashed too -- pg_ctl -m immediate, SIGKILL -- just before
    rhemad: acknowledged writes must survive that as well);
  - restart and check every session: an acknowledged version must be there,
    with exactly the acknowledged record, or be replaced only by the one write
    whose reply never came back (its outcome is unknown); an acknowledged
    delete must stay deleted; every record is well-formed JSON; the status
    index and the full listing agree with the records; the consensus log
    holds every acknowledged entry with its term and data, without gaps.

RHEMA_CRASH_SEED=N replays the random choices (the seed is in the summary).
"""

import http.client
import itertools
import json
import os
import random
import signal
import threading
import time
import uuid

import pytest

from conftest import (ANY, Daemon, PgServer, RedisServer, after_append, append_problem,
                      etag_version, require_plugin, require_postgres, require_redis, same_record,
                      session_problem, strip)


CYCLES = int(os.environ.get("RHEMA_CRASH_CYCLES") or 5)
SEED = int(os.environ.get("RHEMA_CRASH_SEED") or random.SystemRandom().randrange(1 << 30))
WRITERS = 4
POOL = 24            # session ids per writer
MAX_MESSAGES = 20    # then the session is replaced by a PUT instead
KILL_AFTER = (0.2, 1.5)
SERVER_CRASH_EVERY = 5
PARTICIPANTS = ["alice", "bob", "carol", "dave"]
STATUSES = ["Active", "Paused", "Completed", "Cancelled"]
NET_ERRORS = (OSError, http.client.HTTPException)


class Sess:
    """What the test knows of one session: the last acknowledged record."""
    __slots__ = ("id", "rec", "pending")

    def __init__(self, sid):
        self.id = sid
        self.rec = None      # stripped record last acknowledged; None: absent
        self.pending = None  # (kind, token) of a write whose outcome is unknown


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.acked = 0           # acknowledged writes (all cycles)
        self.acked_entries = 0
        self.reads = 0
        self.unknown = 0         # writes cut off by the kill (outcome unknown)
        self.unknown_applied = 0
        self.anomalies = []      # unexpected answers

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def anomaly(self, text):
        with self.lock:
            if len(self.anomalies) < 50:
                self.anomalies.append(text)


def _body_error(r):
    try:
        return json.loads(r.body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return r.body[:200]


class SessionWriter(threading.Thread):
    def __init__(self, d, sessions, rng, stats, stop, server_down, seq):
        super().__init__(daemon=True)
        self.d, self.sessions, self.rng, self.stats = d, sessions, rng, stats
        self.stop, self.server_down = stop, server_down
        self.seq = seq  # shared by every writer of every cycle: tokens never repeat
        self.error = None

    def run(self):
        conn = self.d.connection(timeout=10)
        try:
            while not self.stop.is_set():
                s, kind = self.pick()
                if s is None:
                    return
                try:
                    self.do(conn, s, kind)
                except NET_ERRORS:
                    return  # killed: s.pending says what was in flight
        except Exception as e:  # a bug in the test: report it, do not hide it
            self.error = e
        finally:
            conn.close()

    def pick(self):
        free = [s for s in self.sessions if s.pending is None]
        if not free:
            return None, None
        live = [s for s in free if s.rec is not None]
        absent = [s for s in free if s.rec is None]
        r = self.rng.random()
        if absent and (len(live) < POOL * 3 // 4 or r < 0.08):
            return self.rng.choice(absent), "create"
        s = self.rng.choice(live)
        if r < 0.45:
            return s, "update"
        if r < 0.80:
            return s, "message" if len(s.rec["messages"]) < MAX_MESSAGES else "update"
        if r < 0.88:
            return s, "delete"
        return s, "get"

    def session_body(self, token):
        rng = self.rng
        return {"topic": token,
                "participants": rng.sample(PARTICIPANTS, rng.randint(1, len(PARTICIPANTS))),
                "status": rng.choice(STATUSES),
                "decisions": [{"token": token, "pad": "d" * rng.randint(0, 600)}]}

    def do(self, conn, s, kind):
        d = self.d
        token = f"{s.id} w{next(self.seq)}"
        path = f"/v1/sessions/{s.id}"
        if kind == "get":
            r = d.request("GET", path, conn=conn)
            self.stats.add(reads=1)
            if r.status != 200:
                return self.unexpected(s, kind, r)
            got = json.loads(r.body)
            if not same_record(strip(got), s.rec):
                self.stats.anomaly(f"GET {s.id}: read {got.get('version')} differs from the "
                                   f"acknowledged record version {s.rec['version']}")
            return
        s.pending = (kind, token)  # until the answer is read
        if kind == "create":
            r = d.request("PUT", path, self.session_body(token),
                          headers={"If-None-Match": "*"}, conn=conn)
            want = 201
        elif kind == "update":
            r = d.request("PUT", path, self.session_body(token),
                          headers={"If-Match": f'"{s.rec["version"]}"'}, conn=conn)
            want = 200
        elif kind == "message":
            msg = {"id": token.replace(" ", "-"), "message_type": "note", "sender_id": "alice",
                   "recipient_ids": ["bob"], "content": token + " " + "m" * self.rng.randint(0, 800),
                   "timestamp": "2026-01-02T03:04:05Z"}
            r = d.request("POST", path + "/messages", msg, conn=conn)
            want = 201
        else:
            r = d.request("DELETE", path, headers={"If-Match": f'"{s.rec["version"]}"'},
                          conn=conn)
            want = 204
        if r.status != want:
            return self.unexpected(s, kind, r)
        if kind == "delete":
            s.rec = None
        else:
            rec = json.loads(r.body)
            problem = append_problem(rec, s.id) if kind == "message" else session_problem(rec, s.id)
            if problem or etag_version(r.headers) != rec["version"]:
                self.stats.anomaly(f"{kind} {s.id}: bad reply {problem or 'ETag'}: {rec!r:.200}")
            elif s.rec is not None and rec["version"] <= s.rec["version"]:
                self.stats.anomaly(f"{kind} {s.id}: version {rec['version']} not above "
                                   f"{s.rec['version']}")
            s.rec = after_append(s.rec, rec) if kind == "message" and not problem else strip(rec)
        s.pending = None
        self.stats.add(acked=1)

    def unexpected(self, s, kind, r):
        """An answer other than the expected one: the outcome is unknown to the model."""
        if s.pending is None and kind != "get":
            s.pending = (kind, None)
        if r.status == 503 and self.server_down.is_set():
            return  # the backend server was crashed on purpose
        self.stats.anomaly(f"{kind} {s.id}: {r.status} {_body_error(r)}")


class LogWriter(threading.Thread):
    """Appends consensus log entries to one node, one at a time."""

    def __init__(self, d, log, rng, stats, stop, server_down):
        super().__init__(daemon=True)
        self.d, self.log, self.rng, self.stats = d, log, rng, stats
        self.stop, self.server_down = stop, server_down
        self.error = None

    def run(self):
        conn = self.d.connection(timeout=10)
        try:
            while not self.stop.is_set() and self.log.pending is None:
                e = self.log.next_entry(self.rng)
                self.log.pending = e
                try:
                    r = self.d.request("POST", f"/v1/consensus/{self.log.node}/entries", e,
                                       conn=conn)
                except NET_ERRORS:
                    return
                if r.status in (200, 201):
                    self.log.entries.append(e)
                    self.log.pending = None
                    self.stats.add(acked=1, acked_entries=1)
                else:
                    if not (r.status == 503 and self.server_down.is_set()):
                        self.stats.anomaly(f"append {e['index']}: {r.status} {_body_error(r)}")
                    return
        except Exception as ex:
            self.error = ex
        finally:
            conn.close()


class ConsensusLog:
    def __init__(self, node):
        self.node = node
        self.entries = []     # acknowledged, index i+1 at [i]
        self.pending = None   # the entry whose outcome is unknown
        self.term = 1
        self.seq = itertools.count()

    def next_entry(self, rng):
        n = next(self.seq)
        return {"index": len(self.entries) + 1, "term": self.term, "command": "set",
                "data": {"seq": n, "key": f"k{n % 17}", "pad": "e" * rng.randint(0, 300)}}


def _get_json(d, conn, path):
    r = d.request("GET", path, conn=conn)
    try:
        return r.status, json.loads(r.body) if r.body else None
    except ValueError:
        raise AssertionError(f"GET {path}: {r.status}, not JSON: {r.body[:200]!r}")


def _list_ids(d, conn, prefix, query=""):
    ids, cursor, pages = [], None, 0
    while True:
        q = f"/v1/sessions?limit=1000{query}" + (f"&cursor={cursor}" if cursor else "")
        st, page = _get_json(d, conn, q)
        assert st == 200, f"GET {q}: {st} {page}"
        ids += [i["id"] for i in page["items"] if i["id"].startswith(prefix)]
        for i in page["items"]:
            problem = session_problem(i)
            assert problem is None, f"listed record {i.get('id')} is malformed: {problem}"
        cursor = page.get("next_cursor")
        pages += 1
        if not cursor or pages > 1000:
            return ids


def verify_sessions(d, sessions, prefix, stats):
    """Check every session against the model after a restart; adopt unknown outcomes."""
    failures = []
    conn = d.connection()
    try:
        for s in sessions:
            st, got = _get_json(d, conn, f"/v1/sessions/{s.id}")
            pend = s.pending
            if pend is not None:
                stats.add(unknown=1)
            if st == 404:
                if s.rec is not None:
                    if pend and pend[0] == "delete":
                        stats.add(unknown_applied=1)
                    else:
                        failures.append(f"LOST {s.id}: acknowledged version "
                                        f"{s.rec['version']} is gone (404)")
                s.rec, s.pending = None, None
                continue
            if st != 200:
                failures.append(f"{s.id}: GET answered {st}: {got}")
                continue
            problem = session_problem(got, s.id)
            if problem:
                failures.append(f"CORRUPT {s.id}: {problem}")
                continue
            got = strip(got)
            m = s.rec
            if m is None:
                if pend and pend[0] == "create" and got["topic"] == pend[1]:
                    stats.add(unknown_applied=1)
                else:
                    failures.append(f"{s.id}: exists (version {got['version']}, topic "
                                    f"{got['topic']!r}) but the model has it absent"
                                    f" (pending {pend}): an acknowledged delete was lost?")
            elif got["version"] == m["version"]:
                if not same_record(got, m):
                    diff = sorted(k for k in set(got) | set(m)
                                  if m.get(k) is not ANY and got.get(k) != m.get(k))
                    failures.append(f"CHANGED {s.id}: version {m['version']} differs from the "
                                    f"acknowledged record in {diff}")
            elif got["version"] < m["version"]:
                failures.append(f"LOST {s.id}: version {got['version']} is back, the "
                                f"acknowledged one was {m['version']}")
            else:
                ok = False
                if pend and pend[0] == "update":
                    ok = got["topic"] == pend[1]
                elif pend and pend[0] == "message":
                    ok = ([x["id"] for x in got["messages"]] ==
                          [x["id"] for x in m["messages"]] + [pend[1].replace(" ", "-")])
                if ok:
                    stats.add(unknown_applied=1)
                else:
                    failures.append(f"{s.id}: version {got['version']} is newer than the "
                                    f"acknowledged {m['version']} but is not the write in "
                                    f"flight ({pend})")
            s.rec, s.pending = got, None
        if failures:
            return failures
        # the listing and the status index agree with the records
        want = sorted(s.id for s in sessions if s.rec is not None)
        listed = _list_ids(d, conn, prefix)
        if listed != want:
            failures.append(f"the listing disagrees with the records: missing "
                            f"{sorted(set(want) - set(listed))[:5]}, extra "
                            f"{sorted(set(listed) - set(want))[:5]}, duplicates "
                            f"{len(listed) - len(set(listed))}")
        for status in STATUSES:
            want = sorted(s.id for s in sessions if s.rec is not None and s.rec["status"] == status)
            listed = _list_ids(d, conn, prefix, f"&status={status}")
            if listed != want:
                byid = {s.id: s for s in sessions}
                odd = sorted(set(want) ^ set(listed))[:5]
                failures.append(f"the {status} index disagrees with the records: missing "
                                f"{sorted(set(want) - set(listed))[:5]}, extra "
                                f"{sorted(set(listed) - set(want))[:5]}; their records: "
                                + ", ".join(f"{i}: " + (f"{byid[i].rec['status']} v"
                                                        f"{byid[i].rec['version']}"
                                                        if byid[i].rec else "absent")
                                            for i in odd))
    finally:
        conn.close()
    return failures


def verify_log(d, log, stats):
    """Every acknowledged entry is present with its term and data; adopt the one in flight."""
    failures = []
    conn = d.connection()
    items, cursor = [], None
    try:
        for _ in range(10000):
            q = f"/v1/consensus/{log.node}/entries?limit=1000" + \
                (f"&cursor={cursor}" if cursor else "")
            st, page = _get_json(d, conn, q)
            if st == 404 and not log.entries:
                break  # nothing was ever acknowledged: the node may not exist
            if st != 200:
                return [f"GET {q}: {st} {page}"]
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                break
    finally:
        conn.close()
    indexes = [i.get("index") for i in items]
    if indexes != list(range(1, len(items) + 1)):
        return [f"consensus log of {log.node}: indexes are not 1..n: {indexes[:10]}..."]
    if len(items) < len(log.entries):
        failures.append(f"LOST consensus entries {len(items) + 1}..{len(log.entries)} "
                        f"(acknowledged {len(log.entries)}, found {len(items)})")
    for e, got in zip(log.entries, items):
        if (got.get("term"), got.get("command"), got.get("data")) != \
                (e["term"], e["command"], e["data"]):
            failures.append(f"CHANGED consensus entry {e['index']}: {got!r:.200}")
            break
    extra = items[len(log.entries):]
    if extra:
        p = log.pending
        if (len(extra) == 1 and p is not None and extra[0].get("index") == p["index"] and
                extra[0].get("data") == p["data"]):
            log.entries.append(p)
            stats.add(unknown_applied=1)
        else:
            failures.append(f"consensus log has {len(extra)} entries beyond the acknowledged "
                            f"{len(log.entries)} that are not the append in flight")
    if log.pending is not None:
        stats.add(unknown=1)
    log.pending = None
    return failures


def consensus_available(d):
    """
    Whether POST /v1/consensus/{node}/entries exists: an empty array is a 400
    where the route exists (no entry is written), a 404 where it does not.
    """
    r = d.request("POST", "/v1/consensus/probe-node/entries", body="[]")
    return r.status != 404


# ---- the backends ----

def _file_setup(tmp_path):
    require_plugin("file")
    cfg = ('persistence: {\n  backend = "file";\n'
           f'  file = {{ directory = "{tmp_path / "files"}"; fsync = true; }};\n}};\n')
    return cfg, None


def _sqlite_setup(tmp_path):
    require_plugin("sqlite")
    cfg = ('persistence: {\n  backend = "sqlite";\n'
           f'  sqlite = {{ path = "{tmp_path / "db" / "rhema.db"}"; synchronous = "full"; }};\n'
           '};\n')
    return cfg, None


def _postgres_setup(tmp_path):
    require_postgres()
    srv = PgServer(tmp_path / "pg")
    return None, srv


def _redis_setup(tmp_path):
    require_redis()
    srv = RedisServer(tmp_path / "redis", appendfsync="always")
    return None, srv


SETUPS = {"file": _file_setup, "sqlite": _sqlite_setup, "postgres": _postgres_setup,
          "redis": _redis_setup}


@pytest.mark.parametrize("backend", list(SETUPS))
def test_sigkill_keeps_every_acknowledged_write(backend, tmp_path, fault_report):
    cfg, srv = SETUPS[backend](tmp_path)
    seed = SEED + sum(map(ord, backend))
    rng = random.Random(seed)
    tag = f"c{uuid.uuid4().hex[:6]}"
    stats = Stats()
    sessions = [[Sess(f"{tag}-w{k}-{i:02d}") for i in range(POOL)] for k in range(WRITERS)]
    allsess = [s for group in sessions for s in group]
    log = ConsensusLog(f"{tag}-node")
    seq = itertools.count()
    use_log = None
    d = None
    t0 = time.monotonic()
    server_crashes = 0
    try:
        if srv is not None:
            srv.init()
            cfg = srv.rhema_config()
        d = Daemon(tmp_path, name=f"rhemad-{backend}", config=cfg, workers=2).start()
        use_log = consensus_available(d)
        for cycle in range(CYCLES):
            stop, server_down = threading.Event(), threading.Event()
            log.term = cycle + 1
            threads = [SessionWriter(d, sessions[k], random.Random(rng.random()), stats, stop,
                                     server_down, seq) for k in range(WRITERS)]
            if use_log:
                threads.append(LogWriter(d, log, random.Random(rng.random()), stats, stop,
                                         server_down))
            for t in threads:
                t.start()
            time.sleep(rng.uniform(*KILL_AFTER))
            crash_server = srv is not None and cycle % SERVER_CRASH_EVERY == SERVER_CRASH_EVERY - 1
            if crash_server:
                server_down.set()
                srv.crash()
                server_crashes += 1
            d.send(signal.SIGKILL)
            assert d.wait(10) == -signal.SIGKILL, "rhemad did not die of SIGKILL"
            stop.set()
            for t in threads:
                t.join(20)
                assert not t.is_alive(), "a writer thread hung after the kill"
                if t.error is not None:
                    raise t.error
            if crash_server:
                srv.restart()
            d.start()
            failures = verify_sessions(d, allsess, tag, stats)
            if use_log:
                failures += verify_log(d, log, stats)
            assert not failures, (f"cycle {cycle + 1}/{CYCLES} (seed {seed}"
                                  f"{', after a server crash' if crash_server else ''}):\n  "
                                  + "\n  ".join(failures[:20]))
            assert not stats.anomalies, \
                f"cycle {cycle + 1}: unexpected answers:\n  " + "\n  ".join(stats.anomalies[:20])
            # the next cycle runs on this daemon, which recovered from the crash
        assert d.stop() == 0, "rhemad did not stop cleanly after the last cycle"
        live = sum(s.rec is not None for s in allsess)
        fault_report(f"{backend}: {CYCLES} SIGKILL cycles ({server_crashes} with a server crash), "
                     f"{stats.acked} acknowledged writes ({stats.acked_entries} consensus "
                     f"entries{'' if use_log else ': API absent, skipped'}), "
                     f"{stats.reads} read-backs, {stats.unknown} writes in flight at the kill "
                     f"({stats.unknown_applied} of them applied), 0 lost, {live} sessions live, "
                     f"{time.monotonic() - t0:.1f} s, seed {seed}")
    finally:
        if d is not None:
            d.kill()
        if srv is not None:
            srv.cleanup()
